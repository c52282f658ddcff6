"""Former home of the file helpers of ``blipx caption``; the one implementation is now
:mod:`blipx.inputs` (kept so ``from blipx.inference import IMAGE_SUFFIXES, collect_images`` works)."""

from blipx.inputs import IMAGE_SUFFIXES, collect_images

__all__ = ["IMAGE_SUFFIXES", "collect_images"]
