"""Pre-LN ViT with timm / Salesforce parameter names (``visual_encoder.*`` in official checkpoints).

HF BLIP's vision model is the same network under other names (see blipx.models.layouts.hf).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from blipx.layers.configs import VisionConfig


def interpolate_pos_embed(pos_embed: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Resize a [1, 1+N, C] position embedding to ``num_patches`` patch positions.

    Same as the official ``interpolate_pos_embed``: the CLS slot is kept, the square patch grid
    is resized bicubically (align_corners=False). Returns the input when sizes already match.
    """
    n_old = pos_embed.shape[1] - 1
    if n_old == num_patches:
        return pos_embed
    old, new = math.isqrt(n_old), math.isqrt(num_patches)
    if old * old != n_old or new * new != num_patches:
        raise ValueError(f"interpolate_pos_embed: non-square grids ({n_old} -> {num_patches} patches)")
    cls_pos, grid = pos_embed[:, :1], pos_embed[:, 1:]
    c = grid.shape[-1]
    grid = grid.reshape(1, old, old, c).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new * new, c).to(pos_embed.dtype)
    return torch.cat([cls_pos, grid], dim=1)


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Fused ``qkv`` Linear with the ``[q; k; v]`` head-major row layout of timm and HF."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()  # exact erf form, as timm and HF
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (BLIP ViT-L / VQA use 0.1)."""
    if p == 0.0 or not training:
        return x
    keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(1 - p)
    return x * keep / (1 - p)


class Block(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg.width, cfg.heads)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(cfg.width, cfg.mlp_dim)
        self.drop_path = cfg.drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class VisionTransformer(nn.Module):
    """pixel_values [B, 3, S, S] -> image_embeds [B, 1 + (S/patch)^2, width] (after the final LN).

    Square images of another size than ``config.image_size`` that tile into whole patches are
    accepted: the position embedding is interpolated on the fly (checkpoint loading resizes it
    once instead). Any other size is refused: the patch convolution would silently drop the
    rows and columns past the last whole patch (or fail on an image smaller than one patch).
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.config = cfg
        n = (cfg.image_size // cfg.patch_size) ** 2
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, cfg.width))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def _check_size(self, pixel_values: torch.Tensor) -> None:
        """Shape metadata only (no sync): [B, 3, S, S] with S a multiple of the patch size."""
        s, patch = self.config.image_size, self.config.patch_size
        shape = tuple(pixel_values.shape)
        if len(shape) == 4 and shape[1] == 3 and shape[2] == shape[3] and shape[2] >= patch and shape[2] % patch == 0:
            return
        got = f"{shape[-2]}x{shape[-1]}" if len(shape) == 4 and shape[1] == 3 else f"shape {shape}"
        raise ValueError(
            f"VisionTransformer: pixel values must be [B, 3, {s}, {s}] (the model's image size; square "
            f"multiples of the patch size {patch} also work, through an interpolated position embedding), "
            f"got {got}. Resize images with blipx.data.image_processor(family, {s})."
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self._check_size(pixel_values)
        x = self.patch_embed(pixel_values.to(self.pos_embed.dtype))
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + interpolate_pos_embed(self.pos_embed, x.shape[1])
        first_ckpt = len(self.blocks) - self.config.grad_ckpt_layers
        for i, blk in enumerate(self.blocks):
            if self.training and i >= first_ckpt and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return self.norm(x)
