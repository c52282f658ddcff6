"""``blipx bench``: finds the bench_*.py scripts, runs each, prints one table per benchmark.

The scripts live in the repository's benchmarks/ folder and are also installed into the package
(blipx/benchmarks) by CMake, so an installed blipx can run them too.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path


def find_bench_dir(explicit: str | None = None) -> Path:
    here = Path(__file__).resolve().parent
    candidates = [Path(explicit)] if explicit else []
    candidates += [here.parent / "benchmarks", here / "benchmarks", Path.cwd() / "benchmarks"]
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
