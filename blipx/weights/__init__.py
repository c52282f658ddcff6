"""Reading, converting and writing model weights.

- ``io``: safe file access (safetensors, or ``torch.load(weights_only=True)``; atomic writes).
- ``hf``: Hugging Face BLIP directories (config + key renames).
- ``official``: Salesforce ALBEF/BLIP ``.pth`` layouts (key renames, config inference).
- ``loading``: filling a model from a state dict with tied-weight aliases and clear errors.
"""

from blipx.weights.io import CheckpointError, read_state_dict
from blipx.weights.loading import LoadReport, load_into_model

__all__ = ["CheckpointError", "LoadReport", "load_into_model", "read_state_dict"]
