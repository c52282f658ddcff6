"""Image-text contrastive loss (ITC) with momentum features, feature queues and momentum
distillation, as ALBEF/BLIP compute it (salesforce/ALBEF ``models/model_pretrain.py``,
salesforce/BLIP ``models/blip_pretrain.py`` and ``blip_retrieval.py``).

- Logits are ``feat @ keys.T / temp`` with ``temp`` a learnable scalar clamped in place to
  [0.001, 0.5] before use (no exp/log parametrisation), init 0.07.
- Keys are the momentum features of the batch followed by the queue: ``[feat_m; queue]``.
- Targets: ``alpha * softmax(momentum logits) + (1 - alpha) * hard targets``; hard targets are
  the diagonal (pretraining) or, with image ids, every key of the same image normalised per row.
- ``loss = (CE_soft(i2t) + CE_soft(t2i)) / 2``.
- Momentum features, queues and targets never receive gradients (detached here even if the
  caller forgot ``no_grad``), the temperature does through the online logits only.

Differences from the official code, all deliberate: queues are stored row-major ``[Q, D]``
(official ``[D, Q]``; a checkpoint loader transposes), the queue pointer lives on the device and
advances with ``blipx.ops.enqueue_`` (no host sync, and Q need not be a multiple of the global
batch), and nothing here needs a process group on a single GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from blipx import ops
from blipx.losses.distributed import concat_all_gather

TEMP_MIN, TEMP_MAX, TEMP_INIT = 0.001, 0.5, 0.07


def clamp_temperature_(temp: torch.Tensor, min_value: float = TEMP_MIN, max_value: float = TEMP_MAX) -> torch.Tensor:
    """Clamp the temperature parameter in place (the official ``with no_grad: temp.clamp_``)."""
    with torch.no_grad():
        temp.clamp_(min_value, max_value)
    return temp


@dataclass
class ITCOutput:
    loss: torch.Tensor  # (loss_i2t + loss_t2i) / 2
    loss_i2t: torch.Tensor
    loss_t2i: torch.Tensor
    sim_i2t: torch.Tensor  # [B, B + Q] online image vs momentum text keys, / temp (ITM weights use [:, :B])
    sim_t2i: torch.Tensor  # [B, B + Q]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``-sum(log_softmax(logits) * targets, dim=1).mean()`` (the official row-wise soft CE)."""
    return -(F.log_softmax(logits, dim=1) * targets).sum(dim=1).mean()


def itc_hard_targets(
    batch: int,
    num_keys: int,
    idx: torch.Tensor | None = None,
    idx_keys: torch.Tensor | None = None,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """[B, num_keys] hard targets: the diagonal, or (with image ids) ``(idx == idx_keys) / row sum``.

    idx: [B] ids of the batch; idx_keys: [num_keys] ids of every key (batch first, then the id
    queue, whose empty slots hold -100 so they never match a real id).
    """
    if idx is None:
        return torch.eye(batch, num_keys, device=device, dtype=dtype)
    keys = idx if idx_keys is None else idx_keys
    pos = (idx.view(-1, 1) == keys.view(1, -1)).to(dtype)
    return pos / pos.sum(dim=1, keepdim=True)  # >= 1 per row: each query matches itself


def itc_loss(
    image_feat: torch.Tensor,
    text_feat: torch.Tensor,
    image_feat_m: torch.Tensor,
    text_feat_m: torch.Tensor,
    temp: torch.Tensor | float,
    *,
    alpha: float = 0.0,
    image_queue: torch.Tensor | None = None,
    text_queue: torch.Tensor | None = None,
    idx: torch.Tensor | None = None,
    idx_queue: torch.Tensor | None = None,
    batch_image_keys: torch.Tensor | None = None,
    batch_text_keys: torch.Tensor | None = None,
    batch_idx: torch.Tensor | None = None,
    key_offset: int = 0,
) -> ITCOutput:
    """ITC on L2-normalised features.

    image_feat, text_feat: [B, D] online features (the gradients' path). image_feat_m,
    text_feat_m: [B, D] momentum features. temp: scalar tensor (already clamped) or float.
    alpha: distillation weight (0 disables the momentum soft targets). image_queue,
    text_queue: [Q, D] past momentum features (or None). idx: [B] image ids for id-aware
    targets (retrieval fine-tuning); idx_queue: [Q] ids of the queued features.

    Multi-process: batch_image_keys / batch_text_keys [W*B, D] are the momentum features of
    every rank (``concat_all_gather``), batch_idx [W*B] their ids, and key_offset = rank * B
    locates this rank's own pairs among them; by default the keys are the local batch.
    """
    b = image_feat.shape[0]
    if idx is not None and image_queue is not None and idx_queue is None:
        raise ValueError("itc_loss: idx was given with feature queues but no idx_queue (the queued keys' ids)")
    with torch.no_grad():
        image_batch = (image_feat_m if batch_image_keys is None else batch_image_keys).detach()
        text_batch = (text_feat_m if batch_text_keys is None else batch_text_keys).detach()
        image_keys = image_batch if image_queue is None else torch.cat([image_batch, image_queue.detach()])
        text_keys = text_batch if text_queue is None else torch.cat([text_batch, text_queue.detach()])
        idx_keys = None
        if idx is not None:
            idx_batch = (idx if batch_idx is None else batch_idx).view(-1)
            idx_keys = idx_batch if idx_queue is None else torch.cat([idx_batch, idx_queue.view(-1).to(idx.dtype)])
        if idx is None and key_offset:
            # This rank's pairs sit at columns key_offset + i of the gathered batch keys.
            cols = torch.arange(text_keys.shape[0], device=image_feat.device)
            rows = torch.arange(b, device=image_feat.device) + key_offset
            targets = (cols.view(1, -1) == rows.view(-1, 1)).to(image_feat.dtype)
        else:
            targets = itc_hard_targets(b, text_keys.shape[0], idx, idx_keys, device=image_feat.device, dtype=image_feat.dtype)
        if alpha > 0:
            temp_ng = temp.detach() if isinstance(temp, torch.Tensor) else temp
            sim_i2t_m = image_feat_m.detach() @ text_keys.t() / temp_ng
            sim_t2i_m = text_feat_m.detach() @ image_keys.t() / temp_ng
            targets_i2t = alpha * F.softmax(sim_i2t_m, dim=1) + (1 - alpha) * targets
            targets_t2i = alpha * F.softmax(sim_t2i_m, dim=1) + (1 - alpha) * targets
        else:
            targets_i2t = targets_t2i = targets
    sim_i2t = image_feat @ text_keys.t() / temp
    sim_t2i = text_feat @ image_keys.t() / temp
    loss_i2t = soft_cross_entropy(sim_i2t, targets_i2t)
    loss_t2i = soft_cross_entropy(sim_t2i, targets_t2i)
    return ITCOutput((loss_i2t + loss_t2i) / 2, loss_i2t, loss_t2i, sim_i2t, sim_t2i)


class FeatureQueue(nn.Module):
    """Ring buffers of past momentum features (and image ids) with a device-side pointer.

    Buffers: ``feat_queue`` [Q, 2, D] (``image_queue``/``text_queue`` are views of it, so one
    ``enqueue_`` writes both), ``queue_ptr`` [1] int64, and with ``with_ids`` ``idx_queue`` [Q]
    int64 (initialised to -100 as BLIP's, never matching an id) with ``idx_queue_ptr``. Features
    start as random unit vectors, as the official queues.
    """

    def __init__(self, queue_size: int, dim: int = 256, with_ids: bool = False) -> None:
        super().__init__()
        if queue_size <= 0:
            raise ValueError(f"FeatureQueue: queue_size must be positive, got {queue_size}")
        self.queue_size, self.dim, self.with_ids = int(queue_size), int(dim), bool(with_ids)
        self.register_buffer("feat_queue", F.normalize(torch.randn(queue_size, 2, dim), dim=-1))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        if with_ids:
            self.register_buffer("idx_queue", torch.full((queue_size,), -100, dtype=torch.long))
            self.register_buffer("idx_queue_ptr", torch.zeros(1, dtype=torch.long))

    @property
    def image_queue(self) -> torch.Tensor:
        return self.feat_queue[:, 0]

    @property
    def text_queue(self) -> torch.Tensor:
        return self.feat_queue[:, 1]

    @torch.no_grad()
    def enqueue_(self, image_feat_m: torch.Tensor, text_feat_m: torch.Tensor, idx: torch.Tensor | None = None) -> None:
        """Gather the momentum features of every rank (no gradient) and write them at the pointer."""
        feats = torch.stack([concat_all_gather(image_feat_m), concat_all_gather(text_feat_m)], dim=1)
        ops.enqueue_(self.feat_queue, self.queue_ptr, feats.to(self.feat_queue.dtype))
        if self.with_ids:
            if idx is None:
                raise ValueError("FeatureQueue.enqueue_: this queue stores image ids; pass idx")
            ops.enqueue_(self.idx_queue, self.idx_queue_ptr, concat_all_gather(idx.view(-1).to(torch.long)))

