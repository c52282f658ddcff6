"""Reading and writing model weights (the conversions of other layouts are in
``blipx.models.layouts``, because they build model configs).

- ``io``: safe file access (safetensors, or ``torch.load(weights_only=True)``; atomic writes).
- ``loading``: filling a model from a state dict with tied-weight aliases and clear errors.
"""

from blipx.weights.io import CheckpointError, read_state_dict
from blipx.weights.loading import LoadReport, load_into_model

__all__ = ["CheckpointError", "LoadReport", "load_into_model", "read_state_dict"]
