"""What the server may read: image files inside the folders it was given, and uploads.

Every file name that arrives in a request goes through :meth:`ServedFolder.path`, which refuses
absolute names, ``..`` and symlinks that leave the folder (through the data layer's own
:func:`blipx.data.images.resolve_image_path`), names without an image suffix, and, for a CapFilt
folder, names that no row of the run mentions. Uploads are decoded with PIL
(:func:`blipx.data.images.decode_image`) before the model sees them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from pathlib import Path

from PIL import Image

from blipx.data.images import MAX_PIXELS, TOO_LARGE, Skipped, decode_image, load_image, resolve_image_path
from blipx.inputs import IMAGE_SUFFIXES

MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # one uploaded image file (a phone photo is 2-5 MB)


class Refused(Exception):
    """A request for a file or an upload that is refused; ``status`` is the HTTP status to send."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class ServedFolder:
    """Image files under ``root``. ``allowed``: when given, a callable returning the only names
    that may be served (a CapFilt run's image names); ``option``: the command-line option that
    named the folder, for error messages."""

    def __init__(self, root: str | os.PathLike, option: str,
                 allowed: Callable[[], Collection[str]] | None = None) -> None:
        if not os.path.isdir(root):
            raise NotADirectoryError(f"{option}: {os.fspath(root)!r} is not a folder")
        self.root = Path(root)
        self.real_root = os.path.realpath(root)
        self.option = option
        self.allowed = allowed

    def path(self, name: str) -> str:
        """The file ``name`` (relative to the folder) may be read from, or :class:`Refused`:
        400 for a name that is not a plain relative name, 403 for one that leaves the folder
        (``..``, absolute, a symlink pointing out), 404 for one that is not a served image file."""
        if not name or "\x00" in name or "\\" in name:
            raise Refused(400, f"bad file name {name!r}")
        if os.path.isabs(name):
            raise Refused(403, f"{name!r}: absolute paths are refused (names are relative to the served folder)")
        resolved = resolve_image_path(self.root, name, allow_outside_root=False, real_root=self.real_root)
        if isinstance(resolved, Skipped):  # "..", or a symlink whose target lies outside the folder
            raise Refused(403, f"{name!r} lies outside the served folder")
        if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
            raise Refused(404, f"{name!r} is not an image file")
        if self.allowed is not None and name not in self.allowed():
            raise Refused(404, f"{name!r} is not an image of this folder")
        if not os.path.isfile(resolved):
            raise Refused(404, f"{name!r} not found")
        return resolved

    def image(self, name: str, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
        """The decoded RGB image ``name``; :class:`Refused` as :meth:`path`, 415 when it does not decode."""
        img = load_image(self.path(name), max_pixels)
        if isinstance(img, Skipped):
            raise Refused(413 if img.reason == TOO_LARGE else 415, f"{name!r}: {img.reason} ({img.detail})")
        return img

    def list(self, limit: int = 1000) -> list[str]:
        """Up to ``limit`` image names (relative, sorted) that :meth:`path` serves."""
        names: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root):  # os.walk does not follow symlinked folders
            dirnames.sort()
            for f in sorted(filenames):
                full = os.path.join(dirpath, f)
                # Quietly leave out what path() would refuse (it logs each refusal: a request's).
                real = os.path.realpath(full)
                if (Path(f).suffix.lower() not in IMAGE_SUFFIXES or not os.path.isfile(real)
                        or os.path.commonpath([real, self.real_root]) != self.real_root):
                    continue
                name = os.path.relpath(full, self.root).replace(os.sep, "/")
                if self.allowed is not None and name not in self.allowed():
                    continue
                names.append(name)
                if len(names) >= limit:
                    return names
        return names


def decode_upload(data: bytes, filename: str, max_bytes: int = MAX_UPLOAD_BYTES,
                  max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """An uploaded file as an RGB image, or :class:`Refused`: 413 above ``max_bytes`` or
    ``max_pixels`` (read from the header, before decoding), 415 when PIL cannot decode it (the
    declared content type is not trusted)."""
    if len(data) > max_bytes:
        raise Refused(413, f"upload {filename!r} is {len(data)} bytes; the limit is {max_bytes} bytes")
    img = decode_image(data, filename or "<upload>", max_pixels)
    if isinstance(img, Skipped):
        if img.reason == TOO_LARGE:
            raise Refused(413, f"upload {filename!r}: {img.detail}")
        raise Refused(415, f"upload {filename!r} is not an image PIL can decode ({img.detail})")
    return img
