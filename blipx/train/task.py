"""Pretraining tasks for ALBEF and BLIP: one ``task(batch)`` call per training step.

A task owns what the official ``forward`` mixed into the model: the momentum update (one
``MomentumEMA.update`` = one ``momentum_update_`` launch for all four encoder/projection pairs),
the feature queues (``FeatureQueue``, written with ``enqueue_``), the alpha of momentum
distillation, the hard-negative draw (``sample_hard_negatives``, no host sync) and the losses.
The models only produce features and logits. Step order follows the official code: online
forward, EMA update, momentum forward, ITC against ``[momentum batch; queue]``, enqueue, ITM with
hard negatives drawn from the ITC similarities, then MLM (ALBEF) or LM (BLIP).
"""

from __future__ import annotations

import torch
from torch import nn

from blipx.losses import (
    FeatureQueue,
    all_gather_with_grad,
    concat_all_gather,
    diagonal_positive_mask,
    world_info,
    build_itm_inputs,
    clamp_temperature_,
    itc_loss,
    itm_loss,
    lm_inputs_and_targets,
    lm_loss,
    mask_tokens,
    mlm_loss,
    sample_itm_negatives,
)
from blipx.models import AlbefPretrainer, BlipPretrainer
from blipx.momentum import MomentumEMA


class PretrainTask(nn.Module):
    """Shared state of the pretraining tasks.

    Args:
        model: a ``BlipPretrainer`` / ``AlbefPretrainer`` (with its ``*_m`` copies).
        queue_size: ITC queue length (official 57600 for 14M/4M runs; 0 = in-batch only). Any
            size works: unlike the official code it need not be a multiple of the global batch.
        momentum: EMA coefficient of the momentum encoders (0.995).
        alpha: momentum-distillation weight at the end of warm-up (0.4); pass the current value
            per step (``blipx.losses.alpha_warmup``) to ``forward`` to ramp it.
        copy_momentum: start the momentum copies equal to the online modules (fresh models); use
            False when the ``*_m`` weights came from a checkpoint.
        gather_keys: with several processes, ITC keys are every rank's momentum features (the
            global batch) followed by the queue, so W processes of B samples compute the same
            ITC as one process of W*B. False: this rank's batch only (official pretraining).
        global_negatives: with several processes, draw ITM hard negatives from the global batch
            (images gathered with gradients, BLIP's ``negative_all_rank``); needs equal text
            lengths on every rank (fixed-length padding, as BLIP pads to max_length).
    """

    def __init__(self, model: nn.Module, queue_size: int = 57600, momentum: float = 0.995, alpha: float = 0.4,
                 copy_momentum: bool = True, gather_keys: bool = True, global_negatives: bool = False) -> None:
        super().__init__()
        self.model = model
        self.alpha = float(alpha)
        self.gather_keys, self.global_negatives = bool(gather_keys), bool(global_negatives)
        embed_dim = model.config.embed_dim
        self.queue = FeatureQueue(queue_size, embed_dim) if queue_size > 0 else None
        # Not a submodule: the momentum copies are the model's own (checkpoint keys *_m).
        self.ema = MomentumEMA(model.momentum_pairs(), momentum=momentum, copy_weights=copy_momentum)

    def _contrastive(self, out, mom, alpha: float, hardness: float):
        """ITC against [momentum batch keys; queue], then the queue write (official order), then
        the hard-negative draw. Returns (ITCOutput, ITMNegatives, candidate offset or None)."""
        q = self.queue
        rank, world = world_info()
        b = out.image_feat.shape[0]
        gathered = world > 1 and (self.gather_keys or self.global_negatives)
        image_keys = concat_all_gather(mom.image_feat) if gathered else None
        text_keys = concat_all_gather(mom.text_feat) if gathered else None
        offset = rank * b if gathered else 0
        itc = itc_loss(
            out.image_feat, out.text_feat, mom.image_feat, mom.text_feat, self.model.temp, alpha=alpha,
            image_queue=None if q is None else q.image_queue, text_queue=None if q is None else q.text_queue,
            batch_image_keys=image_keys, batch_text_keys=text_keys, key_offset=offset,
        )
        if q is not None:
            q.enqueue_(mom.image_feat, mom.text_feat)
        # Hard negatives by the online-vs-momentum-batch similarities (official: sim[:, :bs]).
        if gathered and self.global_negatives:
            n = world * b
            mask = diagonal_positive_mask(b, n, offset, device=out.image_feat.device)
            negatives = sample_itm_negatives(itc.sim_i2t[:, :n], itc.sim_t2i[:, :n], positive_mask=mask,
                                             generator=self._generator, hardness=hardness)
            return itc, negatives, True
        cols = slice(offset, offset + b)  # this rank's own block of keys
        negatives = sample_itm_negatives(itc.sim_i2t[:, cols], itc.sim_t2i[:, cols], generator=self._generator,
                                         hardness=hardness)
        return itc, negatives, False

    def _itc_itm(self, out, pixel_values, input_ids, attention_mask, alpha, hardness, update_momentum, texts,
                 gather_texts):
        """EMA step, momentum features, ITC (+ enqueue), hard negatives and the ITM loss;
        returns (ITCOutput, loss_itm, momentum features).

        ``texts``: what the ITM encoder takes for a negative text -- token ids (BLIP re-encodes
        them with [ENC]) or unimodal text states (ALBEF's fusion layers); ``gather_texts`` fetches
        them from every rank for global negatives (ids without gradient, states with it).
        """
        if update_momentum:
            self.ema.update()
        mom = self.model.momentum_features(pixel_values, input_ids, attention_mask)
        itc, negatives, global_negs = self._contrastive(out, mom, alpha, hardness)
        cand = {}
        if global_negs:  # images of other ranks are gathered with gradients (BLIP's all_gather_with_grad)
            cand = dict(image_candidates=all_gather_with_grad(out.image_embeds), text_candidates=gather_texts(texts),
                        text_atts_candidates=concat_all_gather(attention_mask))
        neg = build_itm_inputs(out.image_embeds, texts, attention_mask, negatives, **cand)
        neg_logits = self.model.itm_logits(neg["image_embeds"], neg["text_embeds"], neg["text_atts"])
        return itc, itm_loss(torch.cat([out.itm_logits, neg_logits]), neg["valid"]), mom

    _generator: torch.Generator | None = None

    def set_generator(self, generator: torch.Generator | None) -> None:
        """Draw masks and hard negatives from ``generator`` (reproducible runs) instead of the default."""
        self._generator = generator


class BlipPretrainTask(PretrainTask):
    """BLIP pretraining: ``loss = loss_itc + loss_itm + loss_lm`` (blip_pretrain.py)."""

    def __init__(self, model: BlipPretrainer, label_smoothing: float = 0.1, **kwargs) -> None:
        if not isinstance(model, BlipPretrainer):
            raise TypeError(f"BlipPretrainTask: model must be a BlipPretrainer, got {type(model).__name__}")
        super().__init__(model, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                alpha: float | None = None, update_momentum: bool = True, image_ids=None,
                hardness: float = 1.0) -> dict[str, torch.Tensor]:
        """pixel_values [B, 3, H, W]; input_ids [B, T] tokenized captions starting with [CLS];
        attention_mask [B, T]; image_ids is accepted and unused (official pretraining has no id
        positives); hardness: of the ITM negatives (``sample_itm_negatives``). Returns
        ``{loss, loss_itc, loss_itm, loss_lm}`` (scalar tensors)."""
        model = self.model
        alpha = self.alpha if alpha is None else float(alpha)
        clamp_temperature_(model.temp)
        out = model(pixel_values, input_ids, attention_mask)
        itc, loss_itm, _ = self._itc_itm(out, pixel_values, input_ids, attention_mask, alpha, hardness,
                                         update_momentum, texts=input_ids, gather_texts=concat_all_gather)
        _, targets = lm_inputs_and_targets(input_ids, bos_token_id=model.config.text.bos_token_id)
        loss_lm = lm_loss(out.lm_logits, targets, label_smoothing=self.label_smoothing)
        loss = itc.loss + loss_itm + loss_lm
        return {"loss": loss, "loss_itc": itc.loss, "loss_itm": loss_itm, "loss_lm": loss_lm}


class AlbefPretrainTask(PretrainTask):
    """ALBEF pretraining: ``loss = loss_itc + loss_itm + loss_mlm`` (model_pretrain.py)."""

    def __init__(self, model: AlbefPretrainer, mask_prob: float = 0.15, **kwargs) -> None:
        if not isinstance(model, AlbefPretrainer):
            raise TypeError(f"AlbefPretrainTask: model must be an AlbefPretrainer, got {type(model).__name__}")
        super().__init__(model, **kwargs)
        self.mask_prob = float(mask_prob)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                alpha: float | None = None, update_momentum: bool = True, image_ids=None,
                hardness: float = 1.0) -> dict[str, torch.Tensor]:
        """Same inputs as :meth:`BlipPretrainTask.forward`; returns ``{loss, loss_itc, loss_itm, loss_mlm}``."""
        model = self.model
        alpha = self.alpha if alpha is None else float(alpha)
        clamp_temperature_(model.temp)
        masked_ids, labels = mask_tokens(input_ids, model.config.text.vocab_size, mask_prob=self.mask_prob,
                                         generator=self._generator)
        out = model(pixel_values, input_ids, attention_mask, masked_input_ids=masked_ids)
        itc, loss_itm, mom = self._itc_itm(out, pixel_values, input_ids, attention_mask, alpha, hardness,
                                           update_momentum, texts=out.text_embeds, gather_texts=all_gather_with_grad)
        with torch.no_grad():
            logits_m = model.mlm_logits(mom.image_embeds, masked_ids, attention_mask, momentum=True)
        loss_mlm = mlm_loss(out.mlm_logits, labels, logits_m, alpha)
        loss = itc.loss + loss_itm + loss_mlm
        return {"loss": loss, "loss_itc": itc.loss, "loss_itm": loss_itm, "loss_mlm": loss_mlm}
