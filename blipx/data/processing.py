"""Test-time image preprocessing of ALBEF and BLIP: square bicubic resize, [0, 1] scaling and
the CLIP mean/std normalisation (both repositories use the CLIP statistics).

This is the one preprocessing path of every image at test time: ``BlipCaptioner.caption`` and
the other high-level calls, the CLIs, evaluation and CapFilt (through :func:`eval_transform`,
which datasets apply per image), so one image file gives the same pixel values everywhere.

PIL images are resized with PIL's bicubic filter, as the official ``transforms.Resize`` on PIL
images and HF's ``BlipImageProcessor`` do; uint8 tensors use torchvision's antialiased bicubic
kernel, which matches PIL to within a few 8-bit levels. Needs ``torchvision``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Resolutions of the released models.
BLIP_IMAGE_SIZES = {"pretrain": 224, "retrieval": 384, "caption": 384, "vqa": 480}
ALBEF_IMAGE_SIZES = {"pretrain": 256, "retrieval": 384, "vqa": 384}


class ImageProcessor:
    """``images -> pixel_values`` float32 [B, 3, S, S].

    Accepts a PIL image, a uint8 tensor [3, H, W] or [B, 3, H, W], or a list of these.
    """

    def __init__(self, image_size: int = 384, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def one(self, img: Any) -> torch.Tensor:
        """One image -> normalised float32 [3, S, S] (what datasets apply per sample)."""
        return self._normalize(self._resize_one(img)[None])[0]

    def _normalize(self, batch: torch.Tensor) -> torch.Tensor:
        return (batch.float().div_(255.0) - self.mean) / self.std

    def _resize_one(self, img: Any) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        size = [self.image_size, self.image_size]
        if isinstance(img, torch.Tensor):
            if img.dtype != torch.uint8:
                raise TypeError(f"image tensors must be uint8 [3, H, W] or [B, 3, H, W], got {img.dtype}")
            if img.ndim != 3 or img.shape[0] != 3:
                raise ValueError(f"expected a uint8 [3, H, W] image, got shape {tuple(img.shape)}")
            return TF.resize(img, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
        # PIL: convert mode first (grayscale, RGBA, palette) as the official loaders do.
        img = img.convert("RGB").resize((self.image_size, self.image_size), resample=3)  # 3 = BICUBIC
        return TF.pil_to_tensor(img)

    def __call__(self, images: Any) -> torch.Tensor:
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            images = list(images)
        elif not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise ValueError("no images given")
        return self._normalize(torch.stack([self._resize_one(im) for im in images]))


def image_processor(family: str = "blip", image_size: int = 384) -> ImageProcessor:
    """The test transform of ``family``: Resize((S, S), bicubic) -> ToTensor -> Normalize(CLIP).

    BLIP and ALBEF use the same pipeline (ALBEF also normalises with the CLIP statistics); the
    family argument keeps call sites honest if a future family differs."""
    if family not in ("blip", "albef"):
        raise ValueError(f"family must be 'blip' or 'albef', got {family!r}")
    return ImageProcessor(image_size)


def eval_transform(image_size: int, family: str = "blip"):
    """Per-image test transform for datasets: PIL image (or uint8 [3, H, W]) -> float32 [3, S, S]."""
    return image_processor(family, image_size).one
