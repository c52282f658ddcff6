"""The distillation weight alpha's warm-up, as the official training loops compute it.

ALBEF (Pretrain.py, Retrieval.py with warm_up): ``alpha * min(1, i / len(loader))`` in epoch 0,
then ``alpha``: a linear ramp over one epoch. BLIP (pretrain.py): ``alpha * min(1, (epoch *
len(loader) + i) / (2 * len(loader)))``: a linear ramp over two epochs. Both are
``alpha * min(1, global_step / warmup_steps)``.
"""

from __future__ import annotations


def alpha_warmup(global_step: int, warmup_steps: int, alpha: float = 0.4) -> float:
    """``alpha * min(1, global_step / warmup_steps)`` (a plain float; warmup_steps <= 0: no ramp)."""
    if warmup_steps <= 0:
        return float(alpha)
    return float(alpha) * min(1.0, global_step / warmup_steps)


def albef_alpha(epoch: int, step: int, steps_per_epoch: int, alpha: float = 0.4) -> float:
    """ALBEF: linear ramp over the first epoch (step = iteration within the epoch)."""
    return alpha_warmup(epoch * steps_per_epoch + step, steps_per_epoch, alpha)


def blip_alpha(epoch: int, step: int, steps_per_epoch: int, alpha: float = 0.4) -> float:
    """BLIP: linear ramp over the first two epochs."""
    return alpha_warmup(epoch * steps_per_epoch + step, 2 * steps_per_epoch, alpha)
