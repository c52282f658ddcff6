"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; a CUDA device without CUDA is refused
    (:func:`blipx.inputs.resolve_device`, as a string for the library calls)."""
    from blipx.inputs import resolve_device as resolve

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


def run_reporting(prog: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace,
                  also: tuple[type[BaseException], ...] = ()) -> int:
    """``run(args)``; a bad path or checkpoint (and any of ``also``) is one line ``<prog>: <message>``
    on stderr and exit code 1, not a traceback: every subcommand ends through here."""
    from blipx.weights.io import CheckpointError

    try:
        return run(args)
    except BrokenPipeError:  # `blipx info | head`: the reader left; no traceback (Python's signal docs)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not raise again
        return 1
    except (FileNotFoundError, CheckpointError, *also) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1


def add_eval_arguments(p: argparse.ArgumentParser, *, model: str, data: str, data_help: str,
                       image_root_help: str | None, shapes: str, batch_size: int) -> None:
    """The options ``blipx eval vqa|nlvr2|ve|grounding`` share: ``--model`` (help ``model``),
    ``--data`` (default ``data``), ``--image-root``, ``--num-samples``, ``--max-objects`` (for the
    synthetic ``shapes`` data), ``--batch-size`` and ``--device``."""
    p.add_argument("--model", required=True, help=model)
    p.add_argument("--data", default=data, help=data_help)
    p.add_argument("--image-root", default=None, help=image_root_help)
    p.add_argument("--num-samples", type=positive_int, default=None)
    p.add_argument("--max-objects", type=positive_int, default=None, help=f"{shapes} only: shapes per scene")
    p.add_argument("--batch-size", type=positive_int, default=batch_size)
    p.add_argument("--device", default="auto")
