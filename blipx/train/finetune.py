"""Fine-tuning tasks: BLIP captioning (LM with a prompt) and ALBEF/BLIP retrieval (ITC with
image-id positives + ITM with id-masked hard negatives), one call per step like the pretraining
tasks (shared/reference/albef-blip.md §1.8, §2.6, §2.7)."""

from __future__ import annotations

import torch
from torch import nn

from blipx.losses import (
    FeatureQueue,
    build_itm_inputs,
    clamp_temperature_,
    itc_loss,
    itm_loss,
    lm_inputs_and_targets,
    lm_loss,
    sample_itm_negatives,
)
from blipx.models import AlbefRetriever, BlipCaptioner, BlipRetriever, with_first_token
from blipx.momentum import MomentumEMA


class CaptionTask(nn.Module):
    """BLIP captioning fine-tuning: ``loss = LM(label smoothing 0.1)`` on ``prompt + caption``
    with the prompt's tokens (``prompt_length``, 4 for 'a picture of ') excluded from the loss."""

    def __init__(self, model: BlipCaptioner, prompt_length: int = 4, label_smoothing: float = 0.1) -> None:
        super().__init__()
        if not isinstance(model, BlipCaptioner):
            raise TypeError(f"CaptionTask: model must be a BlipCaptioner, got {type(model).__name__}")
        self.model, self.prompt_length = model, int(prompt_length)
        self.label_smoothing = float(label_smoothing)

    def forward(self, pixel_values, input_ids, attention_mask, alpha: float | None = None, image_ids=None,
                hardness: float = 1.0):
        """alpha, image_ids and hardness are accepted for the trainer's uniform call and unused."""
        cfg = self.model.config.text
        decoder_ids, targets = lm_inputs_and_targets(input_ids, bos_token_id=cfg.bos_token_id,
                                                     prompt_length=self.prompt_length)
        logits = self.model(pixel_values, decoder_ids, attention_mask).logits
        loss = lm_loss(logits, targets, label_smoothing=self.label_smoothing)
        return {"loss": loss, "loss_lm": loss}


class RetrievalTask(nn.Module):
    """Retrieval fine-tuning: ``loss = loss_itc + loss_itm``.

    ITC: online features against [momentum batch; queue] with image-id positives (all captions
    of an image) and momentum distillation. ITM: one hard negative per direction, never a caption
    of the same image; BLIP draws by online-feature similarities and re-encodes [ENC] ids, ALBEF
    by the ITC similarities and fuses the unimodal text states (official recipes).
    """

    def __init__(self, model: BlipRetriever | AlbefRetriever, queue_size: int = 57600, momentum: float = 0.995,
                 alpha: float = 0.4, copy_momentum: bool = True) -> None:
        super().__init__()
        if not isinstance(model, (BlipRetriever, AlbefRetriever)) or not model.has_momentum:
            raise TypeError("RetrievalTask: model must be a BlipRetriever/AlbefRetriever built with momentum=True")
        self.model, self.alpha = model, float(alpha)
        self.is_blip = isinstance(model, BlipRetriever)
        self.queue = FeatureQueue(queue_size, model.config.embed_dim, with_ids=True) if queue_size > 0 else None
        self.ema = MomentumEMA(model.momentum_pairs(), momentum=momentum, copy_weights=copy_momentum)

    def _text_states(self, input_ids, attention_mask, momentum: bool = False):
        m = self.model
        if self.is_blip:
            enc = m.text_encoder_m if momentum else m.text_encoder
            return enc(input_ids, attention_mask, mode="text").last_hidden_state
        return m.encode_text(input_ids, attention_mask, momentum=momentum)

    def forward(self, pixel_values, input_ids, attention_mask, image_ids, alpha: float | None = None,
                hardness: float = 1.0):
        m = self.model
        alpha = self.alpha if alpha is None else float(alpha)
        clamp_temperature_(m.temp)
        image_embeds = m.visual_encoder(pixel_values)
        image_feat = m.image_features(image_embeds)
        text_embeds = self._text_states(input_ids, attention_mask)
        text_feat = m.text_features(text_embeds)
        self.ema.update()
        with torch.no_grad():
            image_feat_m = m.image_features(m.visual_encoder_m(pixel_values), True)
            text_feat_m = m.text_features(self._text_states(input_ids, attention_mask, momentum=True), True)
        q = self.queue
        idx = image_ids.view(-1).long()
        itc = itc_loss(image_feat, text_feat, image_feat_m, text_feat_m, m.temp, alpha=alpha, idx=idx,
                       image_queue=None if q is None else q.image_queue, text_queue=None if q is None else q.text_queue,
                       idx_queue=None if q is None else q.idx_queue)
        if q is not None:
            q.enqueue_(image_feat_m, text_feat_m, idx)

        b = idx.shape[0]
        if self.is_blip:  # BLIP: weights from online features, no momentum keys
            with torch.no_grad():
                sim = image_feat @ text_feat.t() / m.temp
            negatives = sample_itm_negatives(sim, sim.t(), idx=idx, hardness=hardness)
            ids = with_first_token(input_ids, m.config.text.enc_token_id)
            neg = build_itm_inputs(image_embeds, ids, attention_mask, negatives)
            pos_logits = m.itm_logits(image_embeds, ids, attention_mask)
        else:  # ALBEF: the ITC similarities against the momentum batch
            negatives = sample_itm_negatives(itc.sim_i2t[:, :b], itc.sim_t2i[:, :b], idx=idx, hardness=hardness)
            neg = build_itm_inputs(image_embeds, text_embeds, attention_mask, negatives)
            pos_logits = m.itm_logits(image_embeds, text_embeds, attention_mask)
        neg_logits = m.itm_logits(neg["image_embeds"], neg["text_embeds"], neg["text_atts"])
        loss_itm = itm_loss(torch.cat([pos_logits, neg_logits]), neg["valid"])
        return {"loss": itc.loss + loss_itm, "loss_itc": itc.loss, "loss_itm": loss_itm}
