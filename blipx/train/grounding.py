"""Grounding fine-tuning: salesforce/ALBEF ``Grounding.py`` trains the retrieval model
(``models/model_retrieval.py``: ITC with image-id positives + ITM with hard negatives, momentum
distillation) on (image, referring expression) pairs, then reads Grad-CAM of the ITM score
(:mod:`blipx.models.gradcam`, :mod:`blipx.evaluation.grounding`). So the task is the retrieval
task (:class:`~blipx.train.finetune.AlbefRetrievalTask` / ``BlipRetrievalTask``); only the data
differ: RefCOCO+ expression files (:class:`blipx.data.grounding.GroundingDataset`) or the
synthetic ``shapes_grounding`` pairs."""

from __future__ import annotations

from pathlib import Path


def build_grounding_task(cfg, model, common: dict):
    """The family's retrieval task (``common``: queue/momentum/alpha settings of ``build_task``)."""
    from blipx.train.finetune import AlbefRetrievalTask, BlipRetrievalTask

    cls = AlbefRetrievalTask if model.config.family == "albef" else BlipRetrievalTask
    return cls(model, **common)


def build_grounding_data(cfg, model, tokenizer, split: str = "train"):
    """(dataset, collate) of a grounding run: ``cfg.data`` = "shapes_grounding" (``data_options``
    as :class:`blipx.data.shapes_grounding.ShapesGroundingDataset`; the test-time resize only:
    a crop or flip would not move the answer cell) or comma-separated RefCOCO+ train files
    (images under ``image_root``) with ``dataset/__init__.py``'s 'grounding' augmentation:
    resize (no crop; ``crop_scale`` [1, 1] is the nearest ``TrainTransform``), flip, RandAugment."""
    from blipx.data import ImageTextCollator, TrainTransform, eval_transform
    from blipx.data.grounding import GroundingDataset
    from blipx.data.shapes_grounding import ShapesGroundingDataset

    family, size = model.config.family, model.config.vision.image_size
    opts = dict(cfg.data_options)
    if cfg.data == "shapes_grounding":
        dataset = ShapesGroundingDataset(split, image_size=opts.pop("image_size", size),
                                         transform=eval_transform(size), **opts)
    else:
        files = cfg.data.split(",")
        scale = tuple(cfg.crop_scale) if cfg.crop_scale is not None else (1.0, 1.0)
        transform = TrainTransform(size, family=family, flip="random", randaugment=cfg.randaugment, scale=scale) \
            if split == "train" else eval_transform(size)
        dataset = GroundingDataset(files, cfg.image_root or str(Path(files[0]).parent), transform=transform,
                                   mode="train" if split == "train" else "test", caption_style=family,
                                   allow_outside_root=cfg.allow_outside_root, **opts)
    # Grounding.py: padding='longest', max_length=30 (ALBEF); BLIP pads its ITM text to 35.
    return dataset, ImageTextCollator(tokenizer, max_length=cfg.max_text_len, padding="longest")


__all__ = ["build_grounding_data", "build_grounding_task"]
