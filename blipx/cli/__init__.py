"""The ``blipx`` command line (also ``python -m blipx``): one module per subcommand, each a thin
shell over library functions that parses arguments, calls the library and prints."""

from __future__ import annotations

import argparse
import sys

from blipx.cli import bench, capfilt, caption, demo, evaluate, info, train

# In ``blipx --help`` order.
COMMANDS = (info, train, evaluate, caption, capfilt, demo, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blipx", description="Fast, faithful ALBEF and BLIP.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:  # the demo owns its options (argparse's REMAINDER drops leading ones)
        return demo.main(argv[1:])
    if argv[:2] == ["eval", "vqa"]:  # VQA evaluation has its own options (answer list, rank/generate)
        from blipx.cli import vqa

        return vqa.main(argv[2:])
    args = build_parser().parse_args(argv)
    from blipx.weights.io import CheckpointError

    try:
        return args.func(args)
    except (FileNotFoundError, CheckpointError) as e:  # a bad path or file: its message, not a traceback
        print(f"blipx {args.command}: {e}", file=sys.stderr)
        return 1
