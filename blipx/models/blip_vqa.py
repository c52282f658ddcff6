"""BLIP VQA model (salesforce/BLIP ``models/blip_vqa.py``): an image-grounded question encoder
and a separate answer decoder (not tied to the encoder) that cross-attends to the question states.

Also the pieces both VQA families share (ALBEF's :class:`blipx.models.AlbefVqa` uses them):

- :func:`rank_answers`: the two-stage ranking over a fixed answer list of the official
  ``rank_answer`` (first-token probabilities -> top-k -> full-sequence log-likelihood -> re-rank),
  with the question K/V projected once and shared by its k candidates (grouped cross-attention);
- :func:`answer_rows`: a question's states repeated once per training answer (official
  ``[question_states[b]] * n``), and the per-answer weighted loss (:func:`weighted_answer_loss`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from blipx.layers.bert import BertLMHead, BertModel
from blipx.layers.vit import VisionTransformer
from blipx.losses.lm import lm_loss
from blipx.models.base import FORMAT_TAG, BlipxModel, Checkpoint, _with_aliases
from blipx.models.blip import with_first_token
from blipx.models.config import ModelConfig, get_config

if TYPE_CHECKING:
    from blipx.generation import GenerateOutput


@dataclass
class VqaOutput:
    image_embeds: torch.Tensor  # [B, 1+N, Dv]
    question_embeds: torch.Tensor  # [B, Tq, H]
    logits: torch.Tensor | None = None  # [B*G, Ta, V] answer-decoder logits, if answer ids given


@dataclass
class RankOutput:
    """Answers ranked per question: ``indices`` [Q, k] into the answer list and their ``scores``
    [Q, k] (sequence log-likelihoods as the family's ``rank_answer`` defines them), best first."""

    indices: torch.Tensor
    scores: torch.Tensor

    @property
    def best(self) -> torch.Tensor:
        """[Q] index of the top answer (BLIP's ``max_ids``; ALBEF's ``topk_ids[argmax]``)."""
        return self.indices[:, 0]


def answer_targets(answer_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """LM targets of answer ids: [PAD] -> -100 (the official ``answer_targets``)."""
    return answer_ids.masked_fill(answer_ids == pad_token_id, -100)


def answer_rows(states: torch.Tensor, mask: torch.Tensor, counts: torch.Tensor, n: int):
    """(states, mask) of each question repeated ``counts[b]`` times -> [n, ...] (official
    ``[question_states[b]] * n`` loop). ``output_size=n`` keeps it free of a host sync; the
    counts vary per question, so training cannot use the fixed-G grouping that ranking uses."""
    return (states.repeat_interleave(counts, dim=0, output_size=n),
            mask.repeat_interleave(counts, dim=0, output_size=n))


def weighted_answer_loss(per_answer: torch.Tensor, weights: torch.Tensor, batch: int) -> torch.Tensor:
    """``(weights * loss).sum() / B``: each question's answers weighted (VQA: the fraction of
    annotators who gave the answer), summed, averaged over the B questions (official)."""
    return (weights.to(per_answer.dtype) * per_answer).sum() / batch


@torch.no_grad()
def rank_answers(
    decoder: BertLMHead,
    question_states: torch.Tensor,
    question_mask: torch.Tensor | None,
    answer_ids: torch.Tensor,
    answer_mask: torch.Tensor,
    k: int = 128,
    *,
    label_smoothing: float = 0.0,
    add_first_token_logprob: bool = False,
) -> RankOutput:
    """The official two-stage ``rank_answer`` over an answer list.

    question_states [Q, Lq, H], question_mask [Q, Lq]; answer_ids / answer_mask [A, Ta], every
    row starting with the decoder's bos (column 0 of row 0 is fed as the start token, as there).
    1. The decoder's first step from bos gives p(first answer token) for each question; the k
       answers (k = min(k, A)) whose first token is most probable are kept.
    2. Those k answers are scored by their full-sequence log-likelihood, ``-lm_loss(reduction=
       'none')`` ([PAD] targets ignored), and re-ranked.
    BLIP (salesforce/BLIP models/blip_vqa.py) scores with the label-smoothed (0.1) loss alone;
    ALBEF (salesforce/ALBEF models/model_vqa.py) uses no smoothing and adds log p(first token)
    once more (``add_first_token_logprob``: its chain rule counts that token twice).

    The question K/V are projected once per decoder layer and shared by the question's k
    candidate rows (rows q*k .. q*k+k-1) through the grouped cross-attention: the official
    ``tile`` of the question states to Q*k rows is never materialised.
    """
    q = question_states.shape[0]
    k = min(int(k), answer_ids.shape[0])
    cross_kv = decoder.bert.project_cross_kv(question_states)
    kw = dict(cross_kv=cross_kv, encoder_attention_mask=question_mask, is_decoder=True)
    start = answer_ids[:1, :1].expand(q, 1)
    first, _ = decoder(start, **kw)
    prob_first = first[:, 0].float().softmax(dim=-1).index_select(1, answer_ids[:, 1])  # [Q, A]
    topk_probs, topk_ids = prob_first.topk(k, dim=1)
    rows = topk_ids.reshape(-1)
    ids, mask = answer_ids.index_select(0, rows), answer_mask.index_select(0, rows)  # [Q*k, Ta]
    logits, _ = decoder(ids, mask, **kw)
    pad = decoder.bert.config.pad_token_id
    scores = -lm_loss(logits, answer_targets(ids, pad), label_smoothing=label_smoothing, reduction="none").view(q, k)
    if add_first_token_logprob:
        scores = scores + topk_probs.log()
    # Stable sort: equal scores keep the first-token order (BLIP's argmax takes the first max).
    scores, order = scores.sort(dim=1, descending=True, stable=True)
    return RankOutput(topk_ids.gather(1, order), scores)


_DECODER_CROSS_KV = re.compile(
    r"text_decoder(_m)?\.bert\.encoder\.layer\.\d+\.crossattention\.self\.(key|value)\.weight")


def fresh_cross_kv(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The official rule for a pretraining decoder that cross-attends to a vision width other
    than the text width (BLIP ViT-L, or the small shapes models) loaded as a VQA answer decoder,
    whose cross-attention reads the question states (text width): salesforce/BLIP
    ``load_checkpoint`` drops every tensor whose shape does not fit, so those key/value weights
    start from a fresh N(0, initializer_range) draw (the momentum copy gets the same draw);
    biases and everything else load. Returns the state dict and the re-drawn names."""
    h = cfg.text.hidden_size
    bad = sorted((k for k, v in sd.items() if _DECODER_CROSS_KV.fullmatch(k) and v.shape[-1] != h),
                 key=lambda k: "_m." in k)  # online names first: their momentum twins reuse the draw
    out = dict(sd)
    for k in bad:
        twin = k.replace("text_decoder_m.", "text_decoder.")
        fresh = torch.randn(sd[k].shape[0], h, dtype=sd[k].dtype) * cfg.initializer_range
        out[k] = out[twin] if twin != k and twin in bad else fresh
    return out, bad


def _all_names(ckpt: Checkpoint, cls: type) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under every name they have: a blipx folder of another head
    stores a shared tensor once (BLIP's decoder cross-attention under ``text_encoder.*``)."""
    is_other = ckpt.format == FORMAT_TAG and ckpt.architecture != cls.__name__
    return _with_aliases(ckpt.state_dict, ckpt) if is_other else dict(ckpt.state_dict)


def _resolve_config(ckpt: Checkpoint, config: str | ModelConfig | None, overrides: dict[str, Any]) -> ModelConfig:
    """The config ``BlipxModel.from_checkpoint`` will build (for load-time rewrites that need it)."""
    cfg = get_config(config) if isinstance(config, str) else (config or ckpt.config)
    return cfg.with_overrides(**overrides)


class BlipVqa(BlipxModel):
    """``visual_encoder`` + ``text_encoder`` (question, cross-attends to the image) +
    ``text_decoder`` (answers, cross-attends to the question; key/value width = text width).

    ``forward`` and ``generate`` use the caller's question ids as given, as HF does (the official
    code puts [ENC] first; see :func:`blipx.models.with_first_token`), and answers start with
    [DEC]. The official-style ``answer_loss`` and ``rank_answers`` take tokenized ids ([CLS]
    first) and write [ENC] / [DEC] into column 0 themselves, as ``BLIP_VQA.forward`` and
    ``train_vqa.py`` do.

    Loads the official ``model_base_vqa_capfilt_large.pth`` layout, HF ``BlipForQuestionAnswering``
    folders, and BLIP pretraining files / folders (``text_encoder`` -> question encoder,
    ``text_decoder`` -> answer decoder, as salesforce/BLIP ``blip_vqa`` + ``load_checkpoint`` do).
    """

    family = "blip"
    _ignore_keys = (r"vision_proj\..*", r"text_proj\..*", r"itm_head\..*", r"temp")

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.visual_encoder = VisionTransformer(config.vision)
        self.text_encoder = BertModel(config.text)
        self.text_decoder = BertLMHead(replace(config.text, encoder_width=config.text.hidden_size))

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, *, config=None, strict: bool = True, **overrides: Any):
        """As :meth:`BlipxModel.from_checkpoint`, plus :func:`fresh_cross_kv` (a pretraining file
        whose decoder cross-attends to a vision width other than the text width)."""
        cfg = _resolve_config(ckpt, config, overrides)
        sd, fresh = fresh_cross_kv(_all_names(ckpt, cls), cfg)
        model = super().from_checkpoint(replace(ckpt, state_dict=sd), config=config, strict=strict, **overrides)
        model.load_report.kept_init.extend(k for k in fresh if k in model.state_dict())  # not ignored _m
        return model

    def _official_ids(self, input_ids: torch.Tensor, answer_ids: torch.Tensor):
        """[ENC] over column 0 of the questions, [DEC] over that of the answers (official)."""
        t = self.config.text
        return with_first_token(input_ids, t.enc_token_id), with_first_token(answer_ids, t.bos_token_id)

    def encode_question(self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask=None) -> torch.Tensor:
        return self.text_encoder(input_ids, attention_mask, encoder_hidden_states=image_embeds).last_hidden_state

    def answer_logits(
        self,
        question_embeds: torch.Tensor,
        question_mask: torch.Tensor | None,
        answer_ids: torch.Tensor,
        answer_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Causal decoder over answers; G answer rows per question share its K/V (rows b*G..)."""
        logits, _ = self.text_decoder(
            answer_ids, answer_mask, encoder_hidden_states=question_embeds,
            encoder_attention_mask=question_mask, is_decoder=True,
        )
        return logits

    def answer_loss(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        answer_ids: torch.Tensor,
        answer_mask: torch.Tensor,
        answer_weights: torch.Tensor,
        answer_counts: torch.Tensor,
        label_smoothing: float = 0.1,
    ) -> torch.Tensor:
        """The official training forward (``BLIP_VQA.forward(train=True)``): question ids
        [B, Tq], the batch's answers flattened to [N, Ta] (both tokenized, [CLS] first),
        ``answer_counts`` [B] (answers per question, summing to N) and ``answer_weights`` [N].
        Returns ``sum(weight * per-answer LM loss) / B``; the LM loss is the label-smoothed
        per-sequence sum of salesforce/BLIP ``med.py`` (``reduction='none'``)."""
        input_ids, answer_ids = self._official_ids(input_ids, answer_ids)
        q = self.encode_question(self.visual_encoder(pixel_values), input_ids, attention_mask)
        states, mask = answer_rows(q, attention_mask, answer_counts, answer_ids.shape[0])
        logits = self.answer_logits(states, mask, answer_ids, answer_mask)
        targets = answer_targets(answer_ids, self.config.text.pad_token_id)
        per_answer = lm_loss(logits, targets, label_smoothing=label_smoothing, reduction="none")
        return weighted_answer_loss(per_answer, answer_weights, pixel_values.shape[0])

    @torch.no_grad()
    def rank_answers(self, pixel_values, input_ids, attention_mask, answer_ids, answer_mask,
                     k_test: int = 128) -> RankOutput:
        """``inference='rank'`` of the official model: question ids [B, Tq] and the candidate
        answers [A, Ta] (the whole answer list), both tokenized ([CLS] first; [ENC] / [DEC] are
        written here); see :func:`rank_answers` (label-smoothed scores, as BLIP's decoder
        computes its loss)."""
        input_ids, answer_ids = self._official_ids(input_ids, answer_ids)
        q = self.encode_question(self.visual_encoder(pixel_values), input_ids, attention_mask)
        return rank_answers(self.text_decoder, q, attention_mask, answer_ids, answer_mask, k_test,
                            label_smoothing=0.1)

    @torch.no_grad()
    def generate(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask=None, *,
        mask_question_padding: bool = False, **kw
    ) -> torch.Tensor | GenerateOutput:
        """Answer ids [B * num_return_sequences, 1 + new] starting with [DEC], as HF
        ``BlipForQuestionAnswering.generate``: the question is encoded against the image, then the
        decoder runs from [DEC] over the question states. As in HF (and the official code), the
        decoder's cross-attention ignores the question padding (an all-ones mask). ``kw``: the
        decoding arguments of :meth:`blipx.models.BlipCaptioner.generate` (``return_dict`` /
        ``output_scores`` included: the same decoding code). The question K/V are projected once
        per question and shared by its beams. Float pixel values only, as there.

        ``mask_question_padding=True`` masks the question padding instead, as training and
        ranking do: with the all-ones mask a short question's answer depends on how long the
        other questions of its batch are."""
        from blipx.generation import check_pixel_values, generate

        check_pixel_values(pixel_values)
        q = self.encode_question(self.visual_encoder(pixel_values), input_ids, attention_mask)
        bos = torch.full((q.shape[0], 1), self.config.text.bos_token_id, dtype=torch.long, device=q.device)
        return generate(self.text_decoder, q, bos, encoder_mask=attention_mask if mask_question_padding else None, **kw)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> VqaOutput:
        image_embeds = self.visual_encoder(pixel_values)
        q = self.encode_question(image_embeds, input_ids, attention_mask)
        logits = None
        if decoder_input_ids is not None:
            logits = self.answer_logits(q, attention_mask, decoder_input_ids, decoder_attention_mask)
        return VqaOutput(image_embeds, q, logits)
