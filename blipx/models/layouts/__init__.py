"""Checkpoint layouts other than blipx's own, converted to blipx names at load time.

- ``hf``: Hugging Face ``transformers`` BLIP folders (config fields and key renames);
- ``official``: Salesforce ALBEF/BLIP ``.pth`` files (key rewrites, config inference).

They live with the models because they build :class:`~blipx.models.config.ModelConfig`s;
``blipx.weights`` stays below the models (file access and state-dict filling only).
"""
