"""Loads blipx's compiled library (``blipx._C``), whose import registers the C++/CUDA ops.

A missing or broken build is not fatal: ``blipx.ops`` then runs the pure-PyTorch references and
says so once (see ``blipx.ops._backend``). ``load_error`` keeps the reason for ``blipx info``.
"""

from __future__ import annotations

import torch  # noqa: F401  (libtorch must be loaded before the extension's symbols resolve)

try:
    from blipx import _C  # type: ignore[attr-defined]

    load_error: str | None = None
except ImportError as exc:  # not built, or built against another torch
    _C = None
    load_error = f"{type(exc).__name__}: {exc}"


def build_info() -> dict:
    """Facts fixed at compile time (version, CUDA toolkit and archs, OpenMP); {} when not built."""
    return dict(_C.build_info()) if _C is not None else {}
