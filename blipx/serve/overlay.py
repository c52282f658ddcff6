"""The Grad-CAM overlay: a heat map over the patch grid drawn over the image, as a PNG."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def display_size(size: tuple[int, int], short: int = 256, long: int = 512) -> tuple[int, int]:
    """``size`` scaled so that small images (a 32-px test scene) are seen and large photos stay
    light: the long side at most ``long``, the short side at least ``short`` where that allows."""
    w, h = size
    scale = max(short / min(w, h), 1.0)
    scale = min(scale, long / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def gradcam_overlay(image: Image.Image, heat: torch.Tensor, size: tuple[int, int] | None = None) -> Image.Image:
    """``heat`` ([grid, grid], any range) over ``image``, as salesforce/LAVIS
    lavis/common/gradcam.py ``getAttMap`` draws it (its copy is in the official BLIP/ALBEF demo
    notebooks): the map scaled to [0, 1], resized bicubically to the image, blurred with a
    Gaussian of sigma 0.02 * the long side and rescaled, coloured with matplotlib's "jet", then
    ``(1 - a**0.7) * image + a**0.7 * jet(a)``. torch's bicubic interpolation and torchvision's
    Gaussian blur (scipy's kernel radius, 4 sigma; reflected borders) stand in for skimage's and
    scipy's. A constant map (nothing to show) leaves the image as it is."""
    import matplotlib
    import torch.nn.functional as F
    from torchvision.transforms.functional import gaussian_blur

    if heat.dim() != 2:
        raise ValueError(f"heat: expected a [grid, grid] map, got shape {tuple(heat.shape)}")
    size = size or display_size(image.size)
    base = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    a = heat.detach().float().cpu()
    a = a - a.min()
    if not torch.isfinite(a).all() or a.max() <= 0:
        return base
    a = F.interpolate((a / a.max())[None, None], size=(size[1], size[0]), mode="bicubic", align_corners=False)
    sigma = 0.02 * max(size)
    a = gaussian_blur(a, kernel_size=2 * int(4 * sigma + 0.5) + 1, sigma=sigma)[0, 0]
    a = a - a.min()
    a = (a / a.max() if a.max() > 0 else a).numpy()
    jet = matplotlib.colormaps["jet"](a)[..., :3]
    w = (a ** 0.7)[..., None]
    img = np.asarray(base, dtype=np.float32) / 255.0
    out = (1 - w) * img + w * jet
    return Image.fromarray(np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
