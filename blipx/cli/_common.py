"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import math


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; a CUDA device without CUDA is refused
    (:func:`blipx.api.resolve_device`, as a string for the library calls)."""
    from blipx.api import resolve_device as resolve

    return str(resolve(device))


# argparse ``type=`` helpers: a value that makes no sense is refused while parsing, and argparse
# names the option ("argument --k-test: must be an integer >= 1, got '0'"), instead of failing
# deep inside a run.


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    return parse


positive_int = _int_at_least(1)  # batch sizes, top-k, sample counts
non_negative_int = _int_at_least(0)  # seeds


def probability(text: str) -> float:
    """A finite number in [0, 1] (thresholds); NaN is refused."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # NaN fails both comparisons
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}")
    return value
