"""VQA fine-tuning tasks on the task contract of :mod:`blipx.train.task` (salesforce/BLIP
``train_vqa.py`` + ``models/blip_vqa.py``; salesforce/ALBEF ``VQA.py`` + ``models/model_vqa.py``).

Batch (``blipx.data.vqa.VqaCollator``): ``pixel_values`` [B, 3, S, S]; question ``input_ids`` /
``attention_mask`` [B, Tq] starting with [CLS]; every question's answers flattened to
``answer_ids`` / ``answer_mask`` [N, Ta] (``[CLS] answer [SEP]``), ``answer_weights`` [N] and
``answer_counts`` [B] (answers per question). The loss of both families is the official one:
``sum over answers of weight * per-answer LM loss, / B``.
"""

from __future__ import annotations

from pathlib import Path

from blipx.models import AlbefVqa, BlipVqa
from blipx.train.task import Task

VQA_INPUTS = ("pixel_values", "input_ids", "attention_mask", "answer_ids", "answer_mask", "answer_weights",
              "answer_counts")


class BlipVqaTask(Task):
    """BLIP VQA: the question encoder reads ``[ENC] question``, the decoder ``[DEC] answer
    [SEP]`` (``BlipVqa.answer_loss`` rewrites column 0 of both, as the official forward does);
    LM loss with label smoothing 0.1."""

    inputs = VQA_INPUTS
    model_class = BlipVqa

    def __init__(self, model: BlipVqa, label_smoothing: float = 0.1) -> None:
        super().__init__(model)
        self.label_smoothing = float(label_smoothing)

    def losses(self, batch, ctx):
        loss = self.model.answer_loss(*(batch[k] for k in VQA_INPUTS), label_smoothing=self.label_smoothing)
        return {"loss": loss, "loss_vqa": loss}


class AlbefVqaTask(Task):
    """ALBEF VQA: ids as tokenized ([CLS] first, [CLS] is the decoder's bos); the answer loss is
    distilled from the momentum decoder's logits with weight ``alpha`` (the trainer ramps it over
    the first epoch, as the official ``warm_up``); the EMA steps once per optimizer step."""

    inputs = VQA_INPUTS
    model_class = AlbefVqa

    def losses(self, batch, ctx):
        loss = self.model.answer_loss(*(batch[k] for k in VQA_INPUTS), alpha=self.alpha_for(ctx),
                                      momentum_step=lambda: self.momentum_step(ctx))
        return {"loss": loss, "loss_vqa": loss}




def build_vqa_data(cfg, model, tokenizer, split: str = "train"):
    """(dataset, collate) of a VQA run: ``cfg.data`` = "shapes_vqa" (the synthetic task;
    ``data_options`` as :class:`blipx.data.shapes_vqa.ShapesVqaDataset`) or comma-separated
    official JSON files (images under ``image_root``; ``data_options.vg_root`` for VG), trained
    with the official fine-tuning augmentation (``TrainTransform``: crop (0.5, 1), flip,
    RandAugment), as both repositories' VQA loaders do. Shapes questions name positions and
    colours, so the synthetic task takes the test-time resize only."""
    from blipx.data import TrainTransform, eval_transform
    from blipx.data.shapes_vqa import ShapesVqaDataset
    from blipx.data.vqa import VqaCollator, VqaDataset

    family, size = model.config.family, model.config.vision.image_size
    opts = dict(cfg.data_options)
    if cfg.data == "shapes_vqa":
        dataset = ShapesVqaDataset(split, image_size=opts.pop("image_size", size), transform=eval_transform(size),
                                   family=family, **opts)
    else:
        files, train = cfg.data.split(","), split == "train"
        transform = TrainTransform(size, family=family, flip="random", randaugment=cfg.randaugment) if train \
            else eval_transform(size)
        dataset = VqaDataset(files, cfg.image_root or str(Path(files[0]).parent), opts.pop("vg_root", None),
                             transform=transform, split="train" if train else "test", family=family,
                             allow_outside_root=cfg.allow_outside_root)
    # BLIP truncates questions at 35 tokens; ALBEF pads to the longest without truncation.
    return dataset, VqaCollator(tokenizer, max_question_len=35 if family == "blip" else None)


__all__ = ["AlbefVqaTask", "BlipVqaTask", "VQA_INPUTS", "build_vqa_data"]
