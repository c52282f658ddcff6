"""Fake (meta) kernels: output metadata for torch.compile / FakeTensor tracing.

The two mutating ops return nothing, so their fake kernels only need to exist.
"""

from __future__ import annotations

import torch

from blipx import _native


def _exists(name: str) -> bool:
    # A compiled library older than the Python sources may lack a newer op; its fake kernel is
    # then skipped and the op's wrapper falls back to the reference (with a warning).
    return _native._C is not None and hasattr(torch.ops.blipx, name)


if _exists("momentum_update_"):

    @torch.library.register_fake("blipx::momentum_update_")
    def _momentum_update_fake(ema_params, params, momentum):
        return None


if _exists("enqueue_"):

    @torch.library.register_fake("blipx::enqueue_")
    def _enqueue_fake(queue, ptr, feats):
        return None


if _exists("sample_hard_negatives"):

    @torch.library.register_fake("blipx::sample_hard_negatives")
    def _sample_hard_negatives_fake(sim, positive_mask=None, generator=None):
        torch._check(sim.dim() == 2, lambda: f"blipx.sample_hard_negatives: sim must be 2-D, got {sim.dim()}-D")
        return sim.new_empty((sim.shape[0],), dtype=torch.long)
