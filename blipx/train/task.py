"""The task contract, and the pretraining tasks of ALBEF and BLIP.

A task is what the official ``forward`` mixed into the model: the losses of one training
objective, plus the training state they need (the momentum EMA, feature queues, a random
generator). The trainer calls ``task(batch, ctx)`` once per micro-batch, with the keys the task
declares in ``inputs`` and a :class:`StepContext`; the task returns ``{"loss", "loss_*"}``.

- :class:`Task`: the model, ``inputs``, the generator, the momentum-distillation ``alpha`` and,
  when the model has momentum copies (``*_m``), their ``MomentumEMA``, stepped once per
  optimizer step by :meth:`Task.momentum_step`.
- :class:`ContrastiveTask`: adds the ITC queue and the one contrastive + ITM step that
  pretraining and retrieval fine-tuning share (:meth:`ContrastiveTask.contrastive_step`).
- :class:`BlipPretrainTask` (ITC + ITM + LM) and :class:`AlbefPretrainTask` (ITC + ITM + MLM);
  the fine-tuning tasks are in :mod:`blipx.train.finetune`.

Step order of the official code: online forward, EMA update, momentum forward, ITC against
``[momentum batch; queue]``, enqueue, ITM with hard negatives drawn from the ITC similarities,
then MLM (ALBEF) or LM (BLIP).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from blipx.losses import (
    FeatureQueue,
    ITCOutput,
    all_gather_with_grad,
    build_itm_inputs,
    clamp_temperature_,
    concat_all_gather,
    diagonal_positive_mask,
    itc_loss,
    itm_loss,
    lm_inputs_and_targets,
    lm_loss,
    mask_tokens,
    mlm_loss,
    positive_mask_from_ids,
    sample_itm_negatives,
    world_info,
)
from blipx.models import AlbefPretrainer, BlipPretrainer
from blipx.models.outputs import MomentumOutput
from blipx.train.momentum import MomentumEMA


@dataclass(frozen=True)
class StepContext:
    """What the trainer tells a task about the micro-batch it computes.

    step: optimizer steps taken so far; alpha: momentum-distillation weight (None: the task's
    own ``alpha``); hardness: of the ITM negatives (``sample_itm_negatives``); micro_batch /
    grad_accum: position inside the gradient accumulation. The default is a whole optimizer
    step in one micro-batch, which is what a direct ``task(batch)`` call computes.
    """

    step: int = 0
    alpha: float | None = None
    hardness: float = 1.0
    micro_batch: int = 0
    grad_accum: int = 1

    @property
    def update_momentum(self) -> bool:
        """First micro-batch: the one EMA step of this optimizer step happens in its forward."""
        return self.micro_batch == 0

    @property
    def sync_gradients(self) -> bool:
        """Last micro-batch: its backward all-reduces the accumulated gradients across ranks."""
        return self.micro_batch == self.grad_accum - 1


class Task(nn.Module):
    """Base of every training task.

    Args:
        model: the blipx model trained (a submodule: checkpoint keys ``model.*``).
        momentum: EMA coefficient of the momentum copies, if the model has them (0.995).
        alpha: momentum-distillation weight when the step context gives none (0.4).
        copy_momentum: start the momentum copies equal to the online modules (fresh models);
            False when the ``*_m`` weights came from a checkpoint.

    Subclasses set ``inputs`` (the batch keys they read; the trainer moves exactly these to the
    device), optionally ``model_class``, and implement :meth:`losses`. A model with momentum
    copies says so by ``has_momentum`` and lists them in ``momentum_pairs()``; a task that
    distils from them without the contrastive step calls :meth:`momentum_step` itself, between
    its online and momentum forwards.
    """

    inputs: ClassVar[tuple[str, ...]] = ("pixel_values", "input_ids", "attention_mask")
    model_class: ClassVar[type | tuple[type, ...] | None] = None

    def __init__(self, model: nn.Module, *, momentum: float = 0.995, alpha: float = 0.4,
                 copy_momentum: bool = True) -> None:
        name = type(self).__name__
        if self.model_class is not None and not isinstance(model, self.model_class):
            classes = self.model_class if isinstance(self.model_class, tuple) else (self.model_class,)
            wanted = "/".join(c.__name__ for c in classes)
            raise TypeError(f"{name}: model must be a {wanted}, got {type(model).__name__}")
        super().__init__()
        self.model = model
        self.alpha = float(alpha)
        # Masks and hard negatives draw from this (None: the default generator of the device).
        self.generator: torch.Generator | None = None
        # Not a submodule: the momentum copies are the model's own (checkpoint keys *_m).
        self.ema = (MomentumEMA(model.momentum_pairs(), momentum=momentum, copy_weights=copy_momentum)
                    if getattr(model, "has_momentum", False) else None)

    def set_generator(self, generator: torch.Generator | None) -> None:
        """Draw masks and hard negatives from ``generator`` (reproducible runs) instead of the default."""
        self.generator = generator

    def alpha_for(self, ctx: StepContext) -> float:
        """The distillation weight of this step (the trainer ramps it; direct calls get ``alpha``)."""
        return self.alpha if ctx.alpha is None else float(ctx.alpha)

    def momentum_step(self, ctx: StepContext) -> None:
        """The EMA step, once per optimizer step: in the first micro-batch's forward (the official
        place, after the online forward and before the momentum forward). Later micro-batches
        of the same step see the same momentum weights, as one big batch would."""
        if self.ema is not None and ctx.update_momentum:
            self.ema.update()

    def forward(self, batch: Mapping[str, torch.Tensor], ctx: StepContext | None = None) -> dict[str, torch.Tensor]:
        missing = [k for k in self.inputs if k not in batch]
        if missing:
            raise KeyError(f"{type(self).__name__} needs batch keys {list(self.inputs)}; missing {missing}")
        return self.losses(batch, StepContext() if ctx is None else ctx)

    def losses(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        """``{"loss": total, "loss_<term>": ...}`` (scalar tensors) for one micro-batch."""
        raise NotImplementedError


@dataclass
class ContrastiveOutput:
    itc: ITCOutput
    loss_itm: torch.Tensor
    momentum: MomentumOutput  # the momentum forward (ALBEF's MLM distillation reuses its image states)


class ContrastiveTask(Task):
    """A task with ITC against ``[momentum batch; queue]`` and ITM on hard negatives.

    Args (besides :class:`Task`'s):
        queue_size: ITC queue length (official 57600 for 14M/4M runs; 0 = in-batch only). Any
            size works: unlike the official code it need not be a multiple of the global batch.
        queue_ids: the queue also stores image ids (retrieval: captions of one image are all
            positives, in the batch and in the queue).
        gather_keys: with several processes, ITC keys are every rank's momentum features (the
            global batch) followed by the queue, so W processes of B samples compute the same
            ITC as one process of W*B. False: this rank's batch only.
        global_negatives: with several processes, draw ITM hard negatives from the global batch
            (images gathered with gradients, BLIP's ``negative_all_rank``); needs equal text
            lengths on every rank (fixed-length padding, as BLIP pads to max_length).
    """

    def __init__(self, model: nn.Module, *, queue_size: int = 57600, queue_ids: bool = False,
                 gather_keys: bool = True, global_negatives: bool = False, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if self.ema is None:
            raise TypeError(f"{type(self).__name__}: the model has no momentum copies; build it with momentum=True")
        self.gather_keys, self.global_negatives = bool(gather_keys), bool(global_negatives)
        embed_dim = model.config.embed_dim
        self.queue = FeatureQueue(queue_size, embed_dim, with_ids=queue_ids) if queue_size > 0 else None

    def hard_negative_logits(self, online, itc: ITCOutput, cols: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """(sim_i2t, sim_t2i) [B, N] the ITM negatives are drawn from: the online queries against
        the momentum batch keys, columns ``cols`` of the ITC logits (official: ``sim[:, :bs]``)."""
        return itc.sim_i2t[:, cols], itc.sim_t2i[:, cols]

    def contrastive_step(self, ctx: StepContext, online, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor, *, itm_texts: torch.Tensor,
                         idx: torch.Tensor | None = None) -> ContrastiveOutput:
        """EMA step, momentum forward, ITC (then the queue write), hard negatives, ITM loss.

        online: the online forward's ``image_embeds`` [B, Li, D], ``image_feat`` / ``text_feat``
        [B, E] and ``itm_logits`` [B, 2] of the positive pairs (None: scored here).
        itm_texts: what the ITM encoder takes for a text -- token ids (BLIP re-encodes them) or
        unimodal text states (ALBEF's fusion layers); for global negatives ids are gathered
        without gradient, states with it. idx: [B] image ids (id positives in ITC and no
        negative of the same image), None: each pair is its own positive.
        """
        model, q, alpha = self.model, self.queue, self.alpha_for(ctx)
        self.momentum_step(ctx)
        mom = model.momentum_features(pixel_values, input_ids, attention_mask)
        rank, world = world_info()
        b = online.image_feat.shape[0]
        gathered = world > 1 and (self.gather_keys or self.global_negatives)
        batch_idx = concat_all_gather(idx) if gathered and idx is not None else None
        itc = itc_loss(
            online.image_feat, online.text_feat, mom.image_feat, mom.text_feat, model.temp, alpha=alpha,
            image_queue=None if q is None else q.image_queue, text_queue=None if q is None else q.text_queue,
            idx=idx, idx_queue=q.idx_queue if q is not None and q.with_ids else None, batch_idx=batch_idx,
            batch_image_keys=concat_all_gather(mom.image_feat) if gathered else None,
            batch_text_keys=concat_all_gather(mom.text_feat) if gathered else None,
            key_offset=rank * b if gathered else 0,
        )
        if q is not None:  # after the ITC: this step's keys enter the queue for the next one
            q.enqueue_(mom.image_feat, mom.text_feat, idx)
        cand = {}
        if gathered and self.global_negatives:
            n = world * b
            sim_i2t, sim_t2i = self.hard_negative_logits(online, itc, slice(0, n))
            mask = (diagonal_positive_mask(b, n, rank * b, device=online.image_feat.device) if idx is None
                    else positive_mask_from_ids(idx, batch_idx))
            negatives = sample_itm_negatives(sim_i2t, sim_t2i, positive_mask=mask, generator=self.generator,
                                             hardness=ctx.hardness)
            gather = all_gather_with_grad if itm_texts.is_floating_point() else concat_all_gather
            cand = dict(image_candidates=all_gather_with_grad(online.image_embeds), text_candidates=gather(itm_texts),
                        text_atts_candidates=concat_all_gather(attention_mask))
        else:
            offset = rank * b if gathered else 0  # this rank's own block of the gathered keys
            sim_i2t, sim_t2i = self.hard_negative_logits(online, itc, slice(offset, offset + b))
            negatives = sample_itm_negatives(sim_i2t, sim_t2i, idx=idx, generator=self.generator,
                                             hardness=ctx.hardness)
        neg = build_itm_inputs(online.image_embeds, itm_texts, attention_mask, negatives, **cand)
        pos_logits = online.itm_logits
        if pos_logits is None:
            pos_logits = model.itm_logits(online.image_embeds, itm_texts, attention_mask)
        neg_logits = model.itm_logits(neg["image_embeds"], neg["text_embeds"], neg["text_atts"])
        return ContrastiveOutput(itc, itm_loss(torch.cat([pos_logits, neg_logits]), neg["valid"]), mom)


class BlipPretrainTask(ContrastiveTask):
    """BLIP pretraining: ``loss = loss_itc + loss_itm + loss_lm`` (blip_pretrain.py).

    Batch: pixel_values [B, 3, H, W]; input_ids [B, T] captions starting with [CLS];
    attention_mask [B, T]. Official pretraining has no image-id positives.
    """

    model_class = BlipPretrainer

    def __init__(self, model: BlipPretrainer, label_smoothing: float = 0.1, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def losses(self, batch, ctx):
        model = self.model
        px, ids, mask = batch["pixel_values"], batch["input_ids"], batch["attention_mask"]
        clamp_temperature_(model.temp)
        out = model(px, ids, mask)
        c = self.contrastive_step(ctx, out, px, ids, mask, itm_texts=ids)
        _, targets = lm_inputs_and_targets(ids, bos_token_id=model.config.text.bos_token_id,
                                           pad_token_id=model.config.text.pad_token_id)
        loss_lm = lm_loss(out.lm_logits, targets, label_smoothing=self.label_smoothing)
        return {"loss": c.itc.loss + c.loss_itm + loss_lm, "loss_itc": c.itc.loss, "loss_itm": c.loss_itm,
                "loss_lm": loss_lm}


class AlbefPretrainTask(ContrastiveTask):
    """ALBEF pretraining: ``loss = loss_itc + loss_itm + loss_mlm`` (model_pretrain.py); the MLM
    loss is distilled from the momentum model's logits on the same masked ids."""

    model_class = AlbefPretrainer

    def __init__(self, model: AlbefPretrainer, mask_prob: float = 0.15, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.mask_prob = float(mask_prob)

    def losses(self, batch, ctx):
        model = self.model
        px, ids, mask = batch["pixel_values"], batch["input_ids"], batch["attention_mask"]
        clamp_temperature_(model.temp)
        t = model.config.text  # the special ids of this model's vocabulary
        masked_ids, labels = mask_tokens(ids, t.vocab_size, mask_prob=self.mask_prob, mask_token_id=t.mask_token_id,
                                         pad_token_id=t.pad_token_id, cls_token_id=t.cls_token_id,
                                         generator=self.generator)
        out = model(px, ids, mask, masked_input_ids=masked_ids)
        c = self.contrastive_step(ctx, out, px, ids, mask, itm_texts=out.text_embeds)
        with torch.no_grad():
            logits_m = model.mlm_logits(c.momentum.image_embeds, masked_ids, mask, momentum=True)
        loss_mlm = mlm_loss(out.mlm_logits, labels, logits_m, self.alpha_for(ctx))
        return {"loss": c.itc.loss + c.loss_itm + loss_mlm, "loss_itc": c.itc.loss, "loss_itm": c.loss_itm,
                "loss_mlm": loss_mlm}


__all__ = ["AlbefPretrainTask", "BlipPretrainTask", "ContrastiveOutput", "ContrastiveTask", "StepContext", "Task"]
