"""The ``blipx`` command line (also ``python -m blipx``): one module per subcommand, each a thin
shell over library functions that parses arguments, calls the library and prints."""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules of blipx.cli, in ``blipx --help`` order; each has ``add_parser(sub)``.
COMMANDS = ("info", "train", "evaluate", "caption", "answer", "match", "features", "classify", "capfilt", "export",
            "demo", "bench", "serve")
# ``blipx eval <what>`` targets with options of their own: module of blipx.cli with ``main(argv)``
# (``retrieval`` and ``caption`` share the options of blipx.cli.evaluate).
EVAL_TARGETS = {"vqa": "vqa", "video-retrieval": "video", "ve": "ve", "grounding": "grounding", "nlvr2": "nlvr"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blipx", description="Fast, faithful ALBEF and BLIP.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"blipx.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:  # the demo owns its options (argparse's REMAINDER drops leading ones)
        from blipx.cli import demo

        return demo.main(argv[1:])
    if argv[:1] == ["eval"] and argv[1:2] and argv[1] in EVAL_TARGETS:
        return importlib.import_module(f"blipx.cli.{EVAL_TARGETS[argv[1]]}").main(argv[2:])
    args = build_parser().parse_args(argv)
    from blipx.cli._common import run_reporting

    return run_reporting(f"blipx {args.command}", args.func, args)
