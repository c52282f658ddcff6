"""Cross-rank gathers used by the objectives, usable without torch.distributed.

``concat_all_gather`` is the official no-gradient gather (queue updates, image ids, negatives'
token ids); ``all_gather_with_grad`` is BLIP's ``GatherLayer``: the backward all-reduces the
stacked gradients and returns this rank's slice, so candidates drawn from other ranks still
train their encoders. With a single process (or no process group) both are the identity, so
single-GPU and CPU runs need no special casing (the official code requires a process group).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_info() -> tuple[int, int]:
    """(rank, world_size); (0, 1) without an initialized process group."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` [B, ...] from every rank along dim 0 (rank order). No gradient."""
    if not is_distributed():
        return tensor.detach()
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Each rank's loss used every rank's slice: sum the gradients over ranks, keep ours.
        grad = grad.contiguous()
        dist.all_reduce(grad)
        b = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * b : (dist.get_rank() + 1) * b]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Like ``concat_all_gather`` but differentiable (BLIP's ``all_gather_with_grad``)."""
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)
