"""The ``blipx`` command line (also ``python -m blipx``)."""

from __future__ import annotations

import argparse
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    from blipx.info import info_lines

    print("\n".join(info_lines()))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from blipx.bench_runner import run_benchmarks

    return run_benchmarks(args.names, quick=args.quick, out=args.out, bench_dir=args.dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blipx", description="Fast, faithful ALBEF and BLIP.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="versions, compiled CUDA archs, and which ops have CPU/CUDA kernels")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("bench", help="run the microbenchmarks and print a table")
    p.add_argument("names", nargs="*", help="benchmarks to run (e.g. ema); default: all")
    p.add_argument("--quick", action="store_true", help="smaller shapes and fewer repeats (smoke run)")
    p.add_argument("--out", default=None, help="JSONL file to append result rows to (default: none)")
    p.add_argument("--dir", default=None, help="directory holding bench_*.py (default: found automatically)")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
