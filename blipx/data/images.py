"""Image decoding that never raises: an unreadable image becomes a :class:`Skipped` record.

Web-scale caption data always has missing files, corrupt bytes and half-downloaded images. The
official code sets ``ImageFile.LOAD_TRUNCATED_IMAGES = True`` (grey-padded garbage reaches the
model) or crashes; here the sample is dropped by the collate and counted by reason, so the
trainer can log how much data a run actually saw. Nothing global in PIL is changed.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

MISSING, CORRUPT, TRUNCATED = "missing", "corrupt", "truncated"
_WARN_LIMIT = 10  # per process: enough to diagnose, without flooding multi-million-sample logs
_warned = 0


@dataclass(frozen=True)
class Skipped:
    """Stands in for a sample whose image could not be read; dropped (and counted) by the collate."""

    reason: str  # MISSING, CORRUPT or TRUNCATED
    source: str  # file path or WebDataset key
    detail: str = ""


def _warn(skip: Skipped) -> Skipped:
    global _warned
    if _warned < _WARN_LIMIT:
        _warned += 1
        tail = " (further skips are only counted)" if _warned == _WARN_LIMIT else ""
        logger.warning("skipping %s image %s: %s%s", skip.reason, skip.source, skip.detail, tail)
    return skip


def _open(fp, source: str) -> Image.Image | Skipped:
    try:
        img = Image.open(fp)
        img.load()  # decode now: Image.open is lazy and would fail later, inside the transform
        return img.convert("RGB")
    except FileNotFoundError as e:
        return _warn(Skipped(MISSING, source, str(e)))
    except (UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, ValueError) as e:
        return _warn(Skipped(CORRUPT, source, str(e)))
    except OSError as e:
        # PIL reports cut-off files as OSError: "image file is truncated", "Truncated File Read"
        # (JPEG) or "broken data stream"; any other OSError is a corrupt file.
        msg = str(e)
        low = msg.lower()
        reason = TRUNCATED if ("truncated" in low or "broken data stream" in low) else CORRUPT
        return _warn(Skipped(reason, source, msg))


def load_image(path: str | os.PathLike) -> Image.Image | Skipped:
    """RGB PIL image from a file, or :class:`Skipped` (missing / corrupt / truncated)."""
    return _open(os.fspath(path), os.fspath(path))


def decode_image(data: bytes, source: str = "<bytes>") -> Image.Image | Skipped:
    """RGB PIL image from encoded bytes (jpg/png/webp ...), or :class:`Skipped`."""
    if not data:
        return _warn(Skipped(CORRUPT, source, "empty image payload"))
    return _open(io.BytesIO(data), source)
