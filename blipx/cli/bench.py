"""``blipx bench``: finds the bench_*.py scripts, runs each, prints one table per benchmark.

The scripts live in the repository's benchmarks/ folder (a source checkout, which an editable
install runs from); they are not installed into the wheel, so an installed blipx is pointed at a
checkout with ``--dir``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path


def find_bench_dir(explicit: str | None = None) -> Path:
    checkout = Path(__file__).resolve().parents[2]  # blipx/cli/bench.py -> the repository root
    candidates = [Path(explicit)] if explicit else []
    candidates += [checkout / "benchmarks", Path.cwd() / "benchmarks"]
    for c in candidates:
        if (c / "harness.py").is_file():
            return c
    raise FileNotFoundError(
        "blipx bench: no benchmarks folder found (looked in: " + ", ".join(map(str, candidates)) + "); pass --dir"
    )


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"blipx_bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="run the microbenchmarks and print a table")
    p.add_argument("names", nargs="*", help="benchmarks to run (e.g. momentum_update); default: all")
    p.add_argument("--quick", action="store_true", help="smaller shapes and fewer repeats (smoke run)")
    p.add_argument("--out", default=None, help="JSONL file to append result rows to (default: none)")
    p.add_argument("--dir", default=None, help="directory holding bench_*.py (default: the source checkout's)")
    p.set_defaults(func=lambda a: run_benchmarks(a.names, quick=a.quick, out=a.out, bench_dir=a.dir))


def run_benchmarks(names: list[str], quick: bool = False, out: str | None = None, bench_dir: str | None = None) -> int:
    root = find_bench_dir(bench_dir)
    sys.path.insert(0, str(root))
    from harness import print_table, save_rows  # type: ignore[import-not-found]

    scripts = sorted(root.glob("bench_*.py"))
    available = {p.stem.removeprefix("bench_"): p for p in scripts}
    unknown = [n for n in names if n not in available]
    if unknown:
        print(f"blipx bench: unknown benchmark(s) {unknown}; available: {sorted(available)}", file=sys.stderr)
        return 2
    failed = []
    for name in names or sorted(available):
        print(f"\n== {name} ({os.path.relpath(available[name])}){' [quick]' if quick else ''}", flush=True)
        try:
            rows, cols = _load(available[name]).run(quick=quick)
        except Exception as exc:  # one broken benchmark must not hide the others' numbers
            print(f"blipx bench: {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed.append(name)
            continue
        print_table(rows, cols)
        save_rows(rows, out)
    return 1 if failed else 0
