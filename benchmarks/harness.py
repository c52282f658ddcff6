"""Shared timing harness for blipx benchmarks.

``time_fn`` times a callable with CUDA events on a GPU (wall clock on the CPU) after warm-up and
returns the median and spread; ``time_providers`` times several callables into one row each;
``syncs_host`` and ``host_ms_behind_busy_gpu`` show whether a call stalls the host on a GPU;
``Recorder`` collects result rows (with device name, torch version and git sha) and appends them
as JSON lines; ``print_table`` prints them.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def git_sha() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def time_fn(fn: Callable[[], object], device: torch.device, *, warmup: int = 3, iters: int = 20,
            min_seconds: float = 0.0) -> dict[str, float]:
    """Median / p20 / p80 of ``fn`` in milliseconds (CUDA events per call on GPU)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start_wall = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        while len(times) < iters or time.perf_counter() - start_wall < min_seconds:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
    else:
        while len(times) < iters or time.perf_counter() - start_wall < min_seconds:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    q = statistics.quantiles(times, n=5) if len(times) >= 2 else [times[0]] * 4
    return {"ms": statistics.median(times), "p20_ms": q[0], "p80_ms": q[3], "n": len(times)}


def time_providers(rec: Recorder, providers: dict[str, Callable[[], object]], device: torch.device, *,
                   iters: int, baseline: str | None = None, **common) -> list[dict]:
    """Time each provider (name -> callable) in turn and add one row each to ``rec``: ms, p20_ms,
    p80_ms and, when ``baseline`` names one of them, ``speedup`` = baseline ms / this ms. The
    ``common`` keys (shape, op, ...) go into every row. Returns the new rows."""
    times = {name: time_fn(fn, device, iters=iters) for name, fn in providers.items()}
    base = times[baseline]["ms"] if baseline in times else None
    rows = []
    for name, t in times.items():
        extra = {"speedup": base / t["ms"]} if base is not None else {}
        rows.append(rec.add(provider=name, **common, ms=t["ms"], p20_ms=t["p20_ms"], p80_ms=t["p80_ms"], **extra))
    return rows


def syncs_host(fn: Callable[[], object], device: torch.device) -> bool | None:
    """Whether one call of ``fn`` makes a synchronizing CUDA call (``.item()``, ``int(t)``, a
    blocking copy) that torch's sync debug mode sees; None off CUDA, where nothing is asynchronous."""
    if device.type != "cuda":
        return None
    prev = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return False
    except RuntimeError as exc:
        if "synchroniz" not in str(exc):  # "called a synchronizing CUDA operation"; anything else is a failure
            raise
        return True
    finally:
        torch.cuda.set_sync_debug_mode(prev)
        torch.cuda.synchronize(device)


def host_ms_behind_busy_gpu(fn: Callable[[], object], device: torch.device, *, busy_ms: float = 1.0,
                            warmup: int = 2, iters: int = 10) -> float | None:
    """Median host wall time (ms) of one ``fn()`` issued while the GPU still runs ~``busy_ms`` of
    earlier work, as in a training step. A call that reads a device value on the host waits for
    that work (about ``busy_ms``); a sync-free one returns after its launches. None off CUDA."""
    if device.type != "cuda":
        return None
    # torch.cuda._sleep spins for a number of GPU cycles: calibrate cycles per ms on this device.
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    probe = 1 << 20
    a.record()
    torch.cuda._sleep(probe)
    b.record()
    b.synchronize()
    cycles = int(probe * busy_ms / max(a.elapsed_time(b), 1e-3))
    times = []
    for i in range(warmup + iters):
        torch.cuda._sleep(cycles)
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize(device)
        if i >= warmup:
            times.append((t1 - t0) * 1e3)
    return statistics.median(times)


class Recorder:
    """Collects rows for one benchmark run; ``save`` appends them as JSON lines."""

    def __init__(self, bench: str, device: torch.device) -> None:
        self.rows: list[dict] = []
        self.common = {
            "bench": bench,
            "device": device_name(device),
            "torch": torch.__version__,
            "git_sha": git_sha(),
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }

    def add(self, **row) -> dict:
        full = {**self.common, **row}
        self.rows.append(full)
        return full

    def save(self, path: str | os.PathLike | None) -> None:
        save_rows(self.rows, path)


def print_table(rows: list[dict], columns: list[str]) -> None:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)] if cells else [len(c) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def save_rows(rows: list[dict], path: str | os.PathLike | None) -> None:
    """Append result rows to a JSON-lines file (no-op without a path)."""
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def bench_main(run: Callable[..., tuple[list[dict], list[str]]], doc: str | None, argv: list[str] | None = None) -> int:
    """Command line shared by every bench_*.py: --quick, --device, --out."""
    import argparse

    ap = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    ap.add_argument("--quick", action="store_true", help="small shapes, few repeats (smoke run)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--out", default=None, help="append JSON result rows to this file")
    args = ap.parse_args(argv)
    rows, cols = run(quick=args.quick, device=args.device)
    print_table(rows, cols)
    save_rows(rows, args.out)
    return 0
