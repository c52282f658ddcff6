"""Exporting trained models to other runtimes.

- Hugging Face transformers: ``model.save_pretrained(dir, format="hf")``
  (:meth:`blipx.models.BlipxModel.save_pretrained`; the key/config tables live in
  :mod:`blipx.models.layouts.hf`, shared with the loader);
- ONNX: :func:`export_onnx` (image encoder + ITC projection, text encoder + ITC projection, ITM
  scorer), in :mod:`blipx.export.onnx`, imported on first use (it needs ``onnx``/``onnxscript``
  only when called).
"""

from __future__ import annotations

from typing import Any

# torch.onnx's exporter (torch.export -> onnxscript) emits opset 18 or later; it cannot convert
# down to 17 (its version converter fails on Reduce* ops, whose axes are inputs since opset 18).
MIN_OPSET = 18
DEFAULT_OPSET = 18


def export_onnx(*args: Any, **kwargs: Any):
    """See :func:`blipx.export.onnx.export_onnx`."""
    from blipx.export.onnx import export_onnx as _export_onnx

    return _export_onnx(*args, **kwargs)


__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "export_onnx"]
