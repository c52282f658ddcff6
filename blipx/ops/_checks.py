"""The argument checks of blipx's ops, for the paths that never reach a compiled kernel.

Every rule lives once, in csrc/checks.cpp. The kernels run it themselves; the pure-PyTorch
references and the fake kernels given real meta tensors (a meta tensor mixed into a CPU call is
dispatched to the fake kernel) run it through its op ``blipx::_check_<op>``, so every path
refuses the same arguments with the same message. Kept apart from ``_backend`` so that the fake
kernels can import it before ``_backend`` looks up which kernels (fake ones included) exist.
"""

from __future__ import annotations

import torch

from blipx import _native

_CHECKS = {
    name: getattr(torch.ops.blipx, f"_check_{name}").default
    for name in ("momentum_update", "enqueue", "sample_hard_negatives", "sample_tokens", "beam_search_step",
                 "cross_attention", "cross_attention_bwd", "cross_attention_mma")
    if _native._C is not None and hasattr(torch.ops.blipx, f"_check_{name}")
}

try:
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor

    _TRACED = (FakeTensor, FunctionalTensor)
except ImportError:  # pragma: no cover - private modules; without them only is_compiling() is used
    _TRACED = ()


def _traced(x) -> bool:
    if isinstance(x, (list, tuple)):
        return bool(x) and _traced(x[0])
    return isinstance(x, _TRACED)


def check_args(op: str, *args) -> None:
    """Run op's argument checks (``blipx::_check_<op>``, the kernels' own rules) on ``args``,
    the op's arguments in its schema order; raises RuntimeError("blipx.<op>: ...").

    Skipped while tracing (torch.compile, export, fake tensors): the C++ checks read concrete
    sizes, which symbolic shapes lack. A compiled kernel still checks when the graph runs, so
    only a compiled *reference* goes unchecked. Skipped as well when the library is not built.
    """
    check = _CHECKS.get(op)
    if check is None or torch.compiler.is_compiling() or _traced(args[0]):
        return
    check(*args)


def sampling_args(temperature, top_k, top_p) -> tuple:
    """sample_tokens' (temperature, top_k, top_p), each a Python scalar or a [B] tensor, as the
    schema's (temperature, top_k, top_p, temperatures, top_ks, top_ps): a per-row tensor goes to
    its tensor slot and its scalar slot gets the neutral value."""
    temps = temperature if isinstance(temperature, torch.Tensor) else None
    ks = top_k if isinstance(top_k, torch.Tensor) else None
    ps = top_p if isinstance(top_p, torch.Tensor) else None
    return (
        1.0 if temps is not None else float(temperature),
        0 if ks is not None else int(top_k),
        1.0 if ps is not None else float(top_p),
        temps,
        ks,
        ps,
    )
