"""MomentumEMA: the exponential moving average that moves a model's momentum copies (``*_m``,
built by ``blipx.models.contrastive.momentum_copy``) toward their online modules. Training
state, so it lives with training: a task owns one and steps it once per optimizer step.

The pairs are matched once; each step is a single ``blipx.ops.momentum_update_`` call (one CUDA
launch for ALBEF's four encoder/projection pairs)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from blipx import ops


class MomentumEMA:
    """Keeps momentum copies as exponential moving averages of their source modules.

    Args:
        pairs: ``(module, momentum_module)`` tuples (or a single tuple); parameters are matched
            by name and must have equal shapes.
        momentum: EMA coefficient m in ``ema = m * ema + (1 - m) * param`` (ALBEF/BLIP: 0.995).
        copy_weights: start each copy as an exact copy of its source (ALBEF's ``copy_params``).

    ``update()`` is one op call, no host sync; the tensor lists are built once here, so call it
    after the modules have been moved to their device and dtype (``.to()`` keeps Parameter
    objects, so later moves are fine too).
    """

    def __init__(
        self,
        pairs: tuple[nn.Module, nn.Module] | Iterable[tuple[nn.Module, nn.Module]],
        momentum: float = 0.995,
        copy_weights: bool = True,
    ) -> None:
        if isinstance(pairs, tuple) and len(pairs) == 2 and isinstance(pairs[0], nn.Module):
            pairs = [pairs]
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"MomentumEMA: momentum must be in [0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.ema_params: list[torch.Tensor] = []
        self.params: list[torch.Tensor] = []
        for k, (src, dst) in enumerate(pairs):
            src_named = dict(src.named_parameters())
            dst_named = dict(dst.named_parameters())
            if src_named.keys() != dst_named.keys():
                missing = sorted(src_named.keys() ^ dst_named.keys())[:5]
                raise ValueError(f"MomentumEMA: pair {k} has different parameter names, e.g. {missing}")
            for name, p in src_named.items():
                e = dst_named[name]
                if e.shape != p.shape:
                    raise ValueError(f"MomentumEMA: pair {k} parameter {name!r}: {tuple(e.shape)} vs {tuple(p.shape)}")
                e.requires_grad_(False)
                self.params.append(p)
                self.ema_params.append(e)
        if copy_weights:
            with torch.no_grad():
                for e, p in zip(self.ema_params, self.params):
                    e.copy_(p)

    def update(self, momentum: float | None = None) -> None:
        """One EMA step over every pair; ``momentum`` overrides the stored coefficient."""
        ops.momentum_update_(self.ema_params, self.params, self.momentum if momentum is None else momentum)
