"""Transcriptions of the official visual-entailment and grounding code (salesforce/ALBEF
models/model_ve.py, VE.py, Grounding.py, models/xbert.py), kept as close to the originals as a
function allows. The text encoder is passed in as ``text_encoder(ids, mask, image_embeds) ->
last_hidden_state`` (the HF-style module of the originals)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def cls_head(hidden_size):
    """model_ve.py ``self.cls_head``."""
    return nn.Sequential(
        nn.Linear(hidden_size, hidden_size),
        nn.ReLU(),
        nn.Linear(hidden_size, 3),
    )


def ve_forward(visual_encoder, text_encoder, head, image, input_ids, attention_mask):
    """model_ve.py ``forward(train=False)``: ``prediction``."""
    image_embeds = visual_encoder(image)
    output = text_encoder(input_ids, attention_mask, image_embeds)
    prediction = head(output[:, 0, :])
    return prediction


def ve_loss(prediction, prediction_m, targets, alpha, distill):
    """model_ve.py ``forward(train=True)``'s loss, given the two predictions."""
    if distill:
        loss = (1 - alpha) * F.cross_entropy(prediction, targets) - alpha * torch.sum(
            F.log_softmax(prediction, dim=1) * F.softmax(prediction_m, dim=1), dim=1).mean()
    else:
        loss = F.cross_entropy(prediction, targets)
    return loss


@torch.no_grad()
def momentum_update(model_pairs, momentum):
    """model_ve.py ``_momentum_update``."""
    for model_pair in model_pairs:
        for param, param_m in zip(model_pair[0].parameters(), model_pair[1].parameters()):
            param_m.data = param_m.data * momentum + param.data * (1. - momentum)


def ve_load_rewrite(state_dict):
    """VE.py's fine-tuning load loop (not ``--evaluate``) over a pretraining state dict."""
    state_dict = dict(state_dict)
    for key in list(state_dict.keys()):
        if 'bert' in key:
            new_key = key.replace('bert.', '')
            state_dict[new_key] = state_dict[key]
            del state_dict[key]
    return state_dict


class XbertCrossAttentionRecorder:
    """xbert.py ``BertSelfAttention.forward`` for cross-attention with ``save_attention``: the
    scores, ``/ sqrt(head size)``, the additive mask, ``Softmax``, then ``save_attention_map`` and
    ``register_hook(save_attn_gradients)`` -- as a stand-in for blipx's cross-attention function
    (q [B, H, Lq, D], k/v [B, H, Lk, D]), recording the ``record``-th call of a forward."""

    def __init__(self, record: int):
        self.record, self.calls = record, 0
        self.attention_map = self.attn_gradients = None

    def save_attn_gradients(self, attn_gradients):
        self.attn_gradients = attn_gradients

    def __call__(self, q, k, v, key_padding_mask=None, scale=None):
        attention_scores = torch.matmul(q, k.transpose(-1, -2))
        attention_scores = attention_scores / math.sqrt(q.shape[-1])
        if key_padding_mask is not None:  # the extended mask: (1 - mask) * -10000
            attention_scores = attention_scores + (key_padding_mask[:, None, None, :].float() * -10000.0)
        attention_probs = nn.Softmax(dim=-1)(attention_scores)
        if self.calls == self.record:
            self.attention_map = attention_probs
            attention_probs.register_hook(self.save_attn_gradients)
        self.calls += 1
        return torch.matmul(attention_probs, v)


def albef_gradcam(cams, grads, attention_mask, grid):
    """Grounding.py ``val`` (gradcam_mode='itm') after ``loss.backward()``."""
    b, heads = cams.shape[:2]
    mask = attention_mask.view(attention_mask.size(0), 1, -1, 1, 1)
    cams = cams[:, :, :, 1:].reshape(b, heads, -1, grid, grid) * mask
    grads = grads[:, :, :, 1:].clamp(min=0).reshape(b, heads, -1, grid, grid) * mask
    gradcam = cams * grads
    gradcam = gradcam.mean(1).mean(1)
    return gradcam


def lavis_gradcam(cams, grads, attention_mask, grid):
    """LAVIS ``compute_gradcam``'s averaged map (``gradcam[ind][1]``) for each row."""
    b, heads = cams.shape[:2]
    mask = attention_mask.view(attention_mask.size(0), 1, -1, 1, 1)
    token_length = attention_mask.sum(dim=-1) - 2
    cams = cams[:, :, :, 1:].reshape(b, heads, -1, grid, grid) * mask
    grads = grads[:, :, :, 1:].clamp(0).reshape(b, heads, -1, grid, grid) * mask
    gradcams = cams * grads
    out = []
    for ind in range(b):
        token_length_ = token_length[ind]
        gradcam = gradcams[ind].mean(0).cpu().detach()
        out.append(gradcam[1:token_length_ + 1, :].sum(dim=0) / token_length_)
    return torch.stack(out)
