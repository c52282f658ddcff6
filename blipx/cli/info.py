"""``blipx info``: what this installation of blipx was built with and can run."""

from __future__ import annotations

import os

import torch

import blipx
from blipx import _native
from blipx.ops._backend import OP_NAMES, has_kernel, use_kernels


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="versions, compiled CUDA archs, and which ops have CPU/CUDA kernels")
    p.add_argument("--kernels", action="store_true",
                   help="also the static report of the compiled CUDA kernels (registers, spills, shared memory, "
                        "occupancy, SASS facts; no GPU needed); exit 1 if a kernel misses its design")
    p.set_defaults(func=run)


def run(args) -> int:
    print("\n".join(info_lines()))
    if not args.kernels:
        return 0
    from blipx.ops import kernel_report

    try:
        report = kernel_report.build_report()
    except kernel_report.ReportUnavailable as exc:
        print(f"\nkernel report unavailable: {exc}")
        return 1
    print("\n" + kernel_report.format_report(report))
    problems = kernel_report.check(report)
    for p in problems:
        print(f"PROBLEM: {p}")
    return 1 if problems else 0


def info_lines() -> list[str]:
    b = _native.build_info()
    yes = {True: "yes", False: "no"}
    lines = [f"blipx {blipx.__version__}"]
    if b:
        lines.append(f"  compiled library: yes (against torch {b['torch_version']})")
    else:
        lines.append(f"  compiled library: NO ({_native.load_error}); ops run their references")
    lines.append(f"torch {torch.__version__}  (CUDA runtime {torch.version.cuda or 'none: CPU build'})")
    if torch.cuda.is_available():
        lines.append(f"  device: {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))})")
    else:
        lines.append("  device: no CUDA device visible")
    if b.get("with_cuda"):
        lines.append(f"CUDA kernels: compiled with CUDA {b['cuda_version']} for archs {b['cuda_archs']}")
    else:
        lines.append("CUDA kernels: not compiled (CPU-only build)")
    lines.append(f"OpenMP: {yes[bool(b.get('with_openmp'))]}, {torch.get_num_threads()} threads")
    env = os.environ.get("BLIPX_USE_KERNELS")
    lines.append(f"kernels in use: {yes[use_kernels()]}" + (f" (BLIPX_USE_KERNELS={env})" if env is not None else ""))
    lines.append("")
    width = max(len(n) for n in OP_NAMES) + 2
    lines.append(f"{'op':<{width}}{'CPU':<6}{'CUDA':<6}")
    for name in OP_NAMES:
        lines.append(f"{name:<{width}}{yes[has_kernel(name, 'cpu')]:<6}{yes[has_kernel(name, 'cuda')]:<6}")
    from blipx.ops import dispatch

    lines.append("")
    lines += dispatch.describe()
    return lines
