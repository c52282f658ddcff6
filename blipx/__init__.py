"""blipx: fast, faithful ALBEF and BLIP on C++/CUDA torch ops.

``import blipx`` loads the compiled ops (``torch.ops.blipx.*``) and their fake/autograd
registrations; the public op API is :mod:`blipx.ops`.
"""

__version__ = "0.1.0"

from blipx import _native  # noqa: F401,E402  (registers torch.ops.blipx.*)
from blipx import ops  # noqa: E402
from blipx import models  # noqa: E402


def __getattr__(name: str):
    # ``blipx.MomentumEMA`` is training state (blipx.train.momentum); resolved on first use so
    # ``import blipx`` / ``import blipx.models`` never import blipx.train.
    if name == "MomentumEMA":
        from blipx.train.momentum import MomentumEMA

        return MomentumEMA
    # ``blipx.load`` / ``blipx.Pipeline``: one-call inference (blipx.api), imported on first use.
    if name in ("load", "Pipeline"):
        from blipx import api

        return getattr(api, name)
    raise AttributeError(f"module 'blipx' has no attribute {name!r}")


__all__ = ["ops", "models", "MomentumEMA", "Pipeline", "load", "__version__"]
