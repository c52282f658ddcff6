"""Fine-tuning tasks on the task contract of :mod:`blipx.train.task`: BLIP captioning (LM with a
prompt) and ALBEF/BLIP retrieval (ITC with image-id positives + ITM with id-masked hard
negatives), as the official recipes (salesforce/BLIP ``train_caption.py``,
``train_retrieval.py``; salesforce/ALBEF ``Retrieval.py``)."""

from __future__ import annotations

from typing import Any

import torch

from blipx.losses import clamp_temperature_, lm_inputs_and_targets, lm_loss
from blipx.models import AlbefRetriever, BlipCaptioner, BlipRetriever, with_first_token
from blipx.models.outputs import RetrieverOutput
from blipx.train.task import ContrastiveTask, Task


class CaptionTask(Task):
    """BLIP captioning fine-tuning: ``loss = LM(label smoothing 0.1)`` on ``prompt + caption``
    with the prompt's tokens (``prompt_length``, 4 for 'a picture of ') excluded from the loss."""

    model_class = BlipCaptioner

    def __init__(self, model: BlipCaptioner, prompt_length: int = 4, label_smoothing: float = 0.1) -> None:
        super().__init__(model)
        self.prompt_length, self.label_smoothing = int(prompt_length), float(label_smoothing)

    def losses(self, batch, ctx):
        t = self.model.config.text
        decoder_ids, targets = lm_inputs_and_targets(batch["input_ids"], bos_token_id=t.bos_token_id,
                                                     pad_token_id=t.pad_token_id, prompt_length=self.prompt_length)
        logits = self.model(batch["pixel_values"], decoder_ids, batch["attention_mask"]).logits
        loss = lm_loss(logits, targets, label_smoothing=self.label_smoothing)
        return {"loss": loss, "loss_lm": loss}


class RetrievalTask(ContrastiveTask):
    """Retrieval fine-tuning: ``loss = loss_itc + loss_itm``.

    ITC: online features against [momentum batch; queue] with image-id positives (all captions
    of an image) and momentum distillation. ITM: one hard negative per direction, never a caption
    of the same image. Keys and negatives are this rank's batch (the official retrieval recipes'
    ITC keys); the queue is written with every rank's keys. The family subclasses say what the
    ITM encoder takes and where negatives are drawn from.
    """

    inputs = ("pixel_values", "input_ids", "attention_mask", "image_ids")

    def __init__(self, model: BlipRetriever | AlbefRetriever, queue_size: int = 57600, **kwargs: Any) -> None:
        super().__init__(model, queue_size=queue_size, queue_ids=True, gather_keys=False, global_negatives=False,
                         **kwargs)

    def itm_texts(self, input_ids: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """What the ITM encoder takes for each text: ids or the unimodal states."""
        raise NotImplementedError(f"{type(self).__name__}: use BlipRetrievalTask or AlbefRetrievalTask")

    def losses(self, batch, ctx):
        m = self.model
        px, ids, mask = batch["pixel_values"], batch["input_ids"], batch["attention_mask"]
        clamp_temperature_(m.temp)
        image_embeds = m.visual_encoder(px)
        image_feat = m.image_features(image_embeds)
        text_embeds = m.encode_text(ids, mask)
        online = RetrieverOutput(image_embeds, image_feat=image_feat, text_feat=m.text_features(text_embeds))
        c = self.contrastive_step(ctx, online, px, ids, mask, itm_texts=self.itm_texts(ids, text_embeds),
                                  idx=batch["image_ids"].view(-1).long())
        return {"loss": c.itc.loss + c.loss_itm, "loss_itc": c.itc.loss, "loss_itm": c.loss_itm}


class BlipRetrievalTask(RetrievalTask):
    """BLIP retrieval (blip_retrieval.py): ITM re-encodes [ENC]-prefixed ids; negatives are drawn
    by the online features' similarities, not the momentum keys."""

    model_class = BlipRetriever

    def itm_texts(self, input_ids, text_embeds):
        return with_first_token(input_ids, self.model.config.text.enc_token_id)

    def hard_negative_logits(self, online, itc, cols):
        with torch.no_grad():
            sim = online.image_feat @ online.text_feat.t() / self.model.temp
        return sim, sim.t()


class AlbefRetrievalTask(RetrievalTask):
    """ALBEF retrieval (Retrieval.py): ITM fuses the unimodal text states; negatives are drawn by
    the ITC similarities against the momentum batch (the pretraining rule)."""

    model_class = AlbefRetriever

    def itm_texts(self, input_ids, text_embeds):
        return text_embeds


__all__ = ["AlbefRetrievalTask", "BlipRetrievalTask", "CaptionTask", "RetrievalTask"]
