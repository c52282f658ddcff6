"""What the one-call API (:mod:`blipx.api`) and the inference commands accept as input, resolved
in one place: device and dtype names, texts, images in every form users hold them (PIL images,
paths, numpy arrays, tensors; see :func:`image_for_processor`) and image files, folders and glob
patterns (:func:`collect_images`). Errors name the argument."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16, "half": torch.float16}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


# -- argument resolution ----------------------------------------------------------------------------


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``None``/"fp32" -> float32, "bf16" -> bfloat16, "fp16" -> float16 (or the torch dtype)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be fp32, bf16 or fp16, got {dtype}")
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise ValueError(f"dtype must be 'fp32', 'bf16', 'fp16' or a torch dtype, got {dtype!r}")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> CUDA when available, else CPU; a CUDA device without CUDA is refused."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: {device!r} is not a torch device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r}, but torch sees no CUDA device; use device='cpu'")
    return dev


def check_dtype_on_device(dtype: torch.dtype, device: torch.device) -> None:
    """fp16 on CPU runs when this torch build has the half-precision CPU kernels the models use
    (matmul, layer norm, GELU, softmax; torch >= 2.1 has them, and blipx's ops dispatch Half);
    an older build would fail mid-forward with "not implemented for 'Half'", so try them once."""
    if device.type != "cpu" or dtype != torch.float16:
        return
    try:
        x = torch.randn(2, 8, dtype=dtype)
        torch.nn.functional.layer_norm(x, (8,))
        torch.nn.functional.gelu(x @ x.t()).softmax(-1)
        torch.nn.functional.linear(x, x)
    except RuntimeError as e:
        raise ValueError(f"dtype='fp16' on CPU: this torch build lacks half-precision CPU kernels ({e}); "
                         "use dtype='bf16' or 'fp32' on CPU") from e


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def as_texts(texts: Any, name: str = "texts") -> list[str]:
    """A string or a sequence of strings -> a list (anything else is a TypeError naming ``name``)."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, Sequence) and all(isinstance(t, str) for t in texts):
        return list(texts)
    raise TypeError(f"{name} must be a string or a list of strings, got {type(texts).__name__}")


# -- images -----------------------------------------------------------------------------------------


def as_images(images: Any, name: str = "images") -> list[Any]:
    """One image or a collection -> a flat list of single images (decoded later, per batch): a
    [B, C, H, W] tensor or a [B, H, W, C] array is B images."""
    import numpy as np
    from PIL import Image

    single = (str, os.PathLike, Image.Image)
    if isinstance(images, single):
        return [images]
    if isinstance(images, torch.Tensor):
        return list(images) if images.dim() == 4 else [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, (list, tuple)):
        out: list[Any] = []
        for im in images:
            if isinstance(im, torch.Tensor) and im.dim() == 4 or isinstance(im, np.ndarray) and im.ndim == 4:
                out.extend(list(im))
            else:
                out.append(im)
        return out
    raise TypeError(f"{name} must be an image (PIL image, path, numpy array or tensor) or a list of them, "
                    f"got {type(images).__name__}")


def _to_uint8(x, where: str):
    """Float pixels in [0, 1] -> uint8 (round to nearest); out of range or non-finite is refused:
    normalised pixel values would otherwise be read as a different image."""
    import numpy as np

    is_tensor = isinstance(x, torch.Tensor)
    empty = (x.numel() if is_tensor else x.size) == 0
    lo, hi = (0.0, 0.0) if empty else (float(x.min()), float(x.max()))  # host data: no device sync
    if not (math.isfinite(lo) and math.isfinite(hi) and lo >= 0.0 and hi <= 1.0):
        raise ValueError(f"{where}: a float image must hold values in [0, 1], got [{lo:.3g}, {hi:.3g}] "
                         "(pass raw images, not normalised pixel values)")
    if is_tensor:
        return x.float().mul(255.0).round_().to(torch.uint8)
    return np.rint(x.astype(np.float32) * 255.0).astype(np.uint8)


def image_for_processor(img: Any, where: str = "image"):
    """One image -> what :class:`blipx.data.ImageProcessor` takes (a PIL image or a uint8
    [3, H, W] CPU tensor). A path is read with :func:`blipx.data.load_image` (an unreadable file
    is a ValueError naming it); numpy arrays become PIL images, so an array decoded from a file
    gives that file's pixels."""
    import numpy as np
    from PIL import Image

    from blipx.data.images import Skipped, load_image

    if isinstance(img, Image.Image):
        return img
    if isinstance(img, (str, os.PathLike)):
        out = load_image(img)
        if isinstance(out, Skipped):
            raise ValueError(f"{where}: cannot read {os.fspath(img)} ({out.reason}: {out.detail})")
        return out
    if isinstance(img, np.ndarray):
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[:, :, 0]
        if not (img.ndim == 2 or img.ndim == 3 and img.shape[2] in (3, 4)):
            raise ValueError(f"{where}: a numpy image must be [H, W] or [H, W, C] with C in 1, 3, 4, "
                             f"got shape {img.shape}")
        if np.issubdtype(img.dtype, np.floating):
            img = _to_uint8(img, where)
        elif img.dtype != np.uint8:
            raise TypeError(f"{where}: a numpy image must be uint8 or float in [0, 1], got {img.dtype}")
        return Image.fromarray(np.ascontiguousarray(img))
    if isinstance(img, torch.Tensor):
        if img.dim() != 3 or img.shape[0] not in (1, 3):
            hint = " (an [H, W, C] image? use .permute(2, 0, 1))" if img.dim() == 3 and img.shape[-1] in (1, 3) else ""
            raise ValueError(f"{where}: a tensor image must be [C, H, W] or [B, C, H, W] with C = 1 or 3, "
                             f"got shape {tuple(img.shape)}{hint}")
        # The processor resizes on the host (PIL / torchvision CPU kernels), so a device tensor is
        # copied here: input preparation, not the model's batch loop.
        img = img.detach().cpu()
        if img.is_floating_point():
            img = _to_uint8(img, where)
        elif img.dtype != torch.uint8:
            raise TypeError(f"{where}: a tensor image must be uint8 or float in [0, 1], got {img.dtype}")
        return img.expand(3, -1, -1) if img.shape[0] == 1 else img
    raise TypeError(f"{where}: expected a PIL image, a path, a numpy array or a tensor, got {type(img).__name__}")


def collect_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given; folders searched recursively for image files; glob patterns expanded
    (``photos/**/*.jpg``); each sorted. A pattern that matches nothing is kept as given, so the
    caller reports it as a missing file."""
    import glob

    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()))
        elif not p.exists() and glob.has_magic(str(item)):
            hits = sorted(Path(h) for h in glob.glob(str(item), recursive=True) if Path(h).is_file())
            out.extend(hits or [p])
        else:
            out.append(p)
    return out


__all__ = ["DTYPES", "IMAGE_SUFFIXES", "as_images", "as_texts", "check_dtype_on_device", "check_positive_int",
           "collect_images", "image_for_processor", "resolve_device", "resolve_dtype"]
