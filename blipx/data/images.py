"""Image decoding that never raises: an unreadable image becomes a :class:`Skipped` record.

Web-scale caption data always has missing files, corrupt bytes and half-downloaded images. The
official code sets ``ImageFile.LOAD_TRUNCATED_IMAGES = True`` (grey-padded garbage reaches the
model) or crashes; here the sample is dropped by the collate and counted by reason, so the
trainer can log how much data a run actually saw. Nothing global in PIL is changed.

:class:`Skipped` is the one record of "this sample was dropped" for the whole data layer: bad
images, bad annotation records and unreadable WebDataset shards alike, so a single counter (the
collate's ``skipped`` / :class:`~blipx.data.collate.SkipCounter`, CapFilt's report) sees them all.

Decoded size is capped at :data:`MAX_PIXELS` (50 M pixels, e.g. 8660 x 5773: above the full
resolution of common cameras, 12-48 MP, and far above web photos). PIL itself only refuses images
above ``2 * Image.MAX_IMAGE_PIXELS`` (~179 M pixels); a 100 M-pixel PNG would otherwise cost ~600 MB
and over a second per sample. The size is read from the header (``Image.open`` is lazy) before any
pixel is decoded. Pass ``max_pixels=`` (``None``: no cap beyond PIL's own) to change it.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

# Skip reasons. Images:
MISSING, CORRUPT, TRUNCATED = "missing", "corrupt", "truncated"
TOO_LARGE = "too_large"  # more pixels than max_pixels (checked on the header, before decoding)
OUTSIDE_ROOT = "outside_root"  # an annotation's image path that leaves image_root
# Annotation records and WebDataset samples:
BAD_RECORD = "bad_record"  # not JSON, not UTF-8, a caption that is not a string, no "image" ...
NO_CAPTION = "no_caption"  # no caption, or nothing left of it after cleaning ("...", "")
# WebDataset shards (one skip per shard: how many samples it held is unknown):
MISSING_SHARD, BAD_SHARD = "missing_shard", "bad_shard"

MAX_PIXELS = 50_000_000

_WARN_LIMIT = 10  # per process: enough to diagnose, without flooding multi-million-sample logs
_warned = 0


@dataclass(frozen=True)
class Skipped:
    """Stands in for a dropped sample, image or record; dropped (and counted) by the collate."""

    reason: str  # one of the reasons above
    source: str  # file path, WebDataset key or shard URL, "annotations.jsonl:17" for a record
    detail: str = ""


def warn_skipped(skip: Skipped) -> Skipped:
    """Log ``skip`` (the first few per process) and return it."""
    global _warned
    if _warned < _WARN_LIMIT:
        _warned += 1
        tail = " (further skips are only counted)" if _warned == _WARN_LIMIT else ""
        logger.warning("skipping (%s) %s: %s%s", skip.reason, skip.source, skip.detail, tail)
    return skip


def resolve_image_path(root: str | os.PathLike, name: str, allow_outside_root: bool = False,
                       real_root: str | None = None) -> str | Skipped:
    """``root / name``, or :class:`Skipped` (``OUTSIDE_ROOT``) when it resolves outside ``root``.

    Annotation files come from the web: an absolute path, ``../`` or a symlink in the image folder
    pointing elsewhere would make the loader read any file the process can. Refused unless
    ``allow_outside_root``; an absolute path that does lie inside ``root`` is fine. ``real_root``:
    ``os.path.realpath(root)``, when the caller has it already (one per dataset, not per sample).
    """
    path = os.path.join(root, name)  # an absolute ``name`` replaces root, as in the official code
    if allow_outside_root:
        return path
    real_root = real_root if real_root is not None else os.path.realpath(root)
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError) as e:  # embedded NUL, symlink loop on some platforms
        return warn_skipped(Skipped(OUTSIDE_ROOT, str(name), f"cannot resolve the path: {e}"))
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        return warn_skipped(Skipped(OUTSIDE_ROOT, str(name), f"resolves to {real}, outside image_root {real_root} "
                                    "(pass allow_outside_root=True to read it)"))
    return path


def _open(fp, source: str, max_pixels: int | None) -> Image.Image | Skipped:
    try:
        img = Image.open(fp)  # lazy: reads the header only
        w, h = img.size
        if max_pixels is not None and w * h > max_pixels:
            img.close()
            return warn_skipped(Skipped(TOO_LARGE, source, f"{w}x{h} = {w * h} pixels > max_pixels={max_pixels}"))
        img.load()  # decode now: Image.open is lazy and would fail later, inside the transform
        return img.convert("RGB")
    except FileNotFoundError as e:
        return warn_skipped(Skipped(MISSING, source, str(e)))
    except Image.DecompressionBombError as e:  # above PIL's own hard limit
        return warn_skipped(Skipped(TOO_LARGE, source, str(e)))
    except (UnidentifiedImageError, SyntaxError, ValueError) as e:
        return warn_skipped(Skipped(CORRUPT, source, str(e)))
    except OSError as e:
        # PIL reports cut-off files as OSError: "image file is truncated", "Truncated File Read"
        # (JPEG) or "broken data stream"; any other OSError is a corrupt file.
        msg = str(e)
        low = msg.lower()
        reason = TRUNCATED if ("truncated" in low or "broken data stream" in low) else CORRUPT
        return warn_skipped(Skipped(reason, source, msg))


def load_image(path: str | os.PathLike, max_pixels: int | None = MAX_PIXELS) -> Image.Image | Skipped:
    """RGB PIL image from a file, or :class:`Skipped` (missing / corrupt / truncated / too large)."""
    return _open(os.fspath(path), os.fspath(path), max_pixels)


def read_image(root: str | os.PathLike, name: str, allow_outside_root: bool = False, real_root: str | None = None,
               max_pixels: int | None = MAX_PIXELS) -> Image.Image | Skipped:
    """The image an annotation names: :func:`resolve_image_path` then :func:`load_image`; a
    :class:`Skipped` from either."""
    path = resolve_image_path(root, name, allow_outside_root, real_root)
    return path if isinstance(path, Skipped) else load_image(path, max_pixels)


def decode_image(data: bytes, source: str = "<bytes>", max_pixels: int | None = MAX_PIXELS) -> Image.Image | Skipped:
    """RGB PIL image from encoded bytes (jpg/png/webp ...), or :class:`Skipped`."""
    if not data:
        return warn_skipped(Skipped(CORRUPT, source, "empty image payload"))
    return _open(io.BytesIO(data), source, max_pixels)
