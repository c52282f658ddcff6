"""Grad-CAM of the ITM match score over the image patch grid (weakly supervised grounding).

The recipe of salesforce/ALBEF ``Grounding.py`` (``val``, ``gradcam_mode='itm'``) and, for BLIP,
salesforce/LAVIS ``lavis/models/blip_models/blip_image_text_matching.py`` ``compute_gradcam``:

1. record the cross-attention probabilities ``A`` [B, H, Lq, 1 + grid^2] of one text layer
   (``block_num``; :class:`blipx.layers.attention.BertCrossAttention` ``save_attention``);
2. ``loss = itm_head(fused [CLS])[:, 1].sum()`` (the "match" logit; BLIP's encoder reads [ENC]);
3. ``G = dloss/dA``; ``cam = A[..., 1:] * G[..., 1:].clamp(min=0)`` times the text padding mask
   (the image [CLS] key dropped), averaged over heads;
4. averaged over text tokens: ALBEF averages over all ``Lq`` positions of the padded batch
   ([CLS] included, padding contributing zeros: ``gradcam.mean(1).mean(1)``); LAVIS averages
   over the tokens between the first and the last ([ENC] and [SEP] excluded:
   ``gradcam[1 : len - 1].sum(0) / (len - 2)``).

Layer defaults: ALBEF ``--block_num 8`` (text-encoder layer 8, the third fusion layer of
BERT-base); BLIP: LAVIS's examples call ``compute_gradcam(..., block_num=7)`` (the function's own
default is 6). A model with fewer layers uses ``min(default, num_layers - 2)`` (at least its
first cross-attention layer): in the last layer only the first token's row can reach the ITM
head, and the BLIP average excludes that row, so the last layer would give an all-zero map.

Unlike the originals, which ``model.zero_grad()`` and then accumulate a backward into every
parameter, the gradient is taken of the attention map alone (``torch.autograd.grad``): the
parameters' ``.grad`` (the caller's, possibly mid-accumulation) are never touched.
"""

from __future__ import annotations

import torch

from blipx.layers.attention import BertCrossAttention, saving_attention
from blipx.layers.bert import BertLMHead, BertModel
from blipx.models.blip import with_first_token

DEFAULT_BLOCK = {"albef": 8, "blip": 7}


def _text_encoder(model) -> BertModel:
    enc = model.text_encoder
    return enc.bert if isinstance(enc, BertLMHead) else enc


def default_layer(model) -> int:
    """The text-encoder layer Grad-CAM reads by default (see the module docstring)."""
    t = model.config.text
    want = DEFAULT_BLOCK[model.config.family]
    return max(t.fusion_layer, min(want, t.num_layers - 2))


def cross_attention_layer(model, layer: int) -> BertCrossAttention:
    """The cross-attention module of text-encoder layer ``layer`` (ValueError if it has none)."""
    layers = _text_encoder(model).encoder.layer
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer={layer}: the text encoder has layers 0..{len(layers) - 1}")
    if not hasattr(layers[layer], "crossattention"):
        raise ValueError(f"layer={layer} has no cross-attention (fusion layers start at "
                         f"{model.config.text.fusion_layer})")
    return layers[layer].crossattention


def token_weights(attention_mask: torch.Tensor, family: str) -> torch.Tensor:
    """[B, Lq] weights of the text tokens in the average over tokens (step 4 of the module
    docstring): ALBEF ``mask / Lq``; BLIP ``1 / (len - 2)`` on tokens ``1 .. len - 2``."""
    mask = attention_mask.float()
    lq = mask.shape[1]
    if family == "albef":
        return mask / max(lq, 1)
    length = mask.sum(dim=1, keepdim=True)  # [B, 1]; the last kept token is [SEP]
    pos = torch.arange(lq, device=mask.device)[None]
    inner = (pos >= 1) & (pos <= length - 2)
    # A text of only [ENC] [SEP] has no inner token: LAVIS divides by 0 there; here the map is 0.
    return inner.float() * mask / (length - 2).clamp(min=1)


def gradcam(model, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            layer: int | None = None) -> torch.Tensor:
    """Grad-CAM maps [B, grid, grid] (float32, >= 0) of the ITM match logit of each (image, text)
    pair over the image patches (grid = image_size / patch_size), from the cross-attention of
    text-encoder layer ``layer`` (default :func:`default_layer`).

    ``model``: an ALBEF (:class:`~blipx.models.AlbefRetriever` / ``AlbefPretrainer``) or BLIP
    (:class:`~blipx.models.BlipRetriever` / ``BlipPretrainer``) model with an ITM head.
    ``input_ids`` / ``attention_mask`` [B, T]: tokenized by the family's tokenizer (BLIP: [CLS]
    first -- [ENC] is written here, as LAVIS does). Runs in eval mode (restored afterwards) with
    gradients on, whatever the caller's grad mode; the layer's attention mode is restored and
    no parameter gradient is written.
    """
    if not hasattr(model, "itm_head"):
        raise TypeError(f"gradcam needs a model with an ITM head (an ALBEF/BLIP retriever or pretrainer), "
                        f"got {type(model).__name__}")
    if pixel_values.dim() != 4:
        raise ValueError(f"pixel_values must be [B, 3, S, S], got shape {tuple(pixel_values.shape)}")
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids and attention_mask must be [B, T] of one shape, got "
                         f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}")
    if input_ids.shape[0] != pixel_values.shape[0]:
        raise ValueError(f"pixel_values has {pixel_values.shape[0]} images but input_ids {input_ids.shape[0]} texts")
    family, vcfg = model.config.family, model.config.vision
    grid = vcfg.image_size // vcfg.patch_size
    layer = default_layer(model) if layer is None else int(layer)
    cross = cross_attention_layer(model, layer)
    b = pixel_values.shape[0]
    param = next(model.parameters())
    if b == 0:
        return torch.zeros(0, grid, grid, device=param.device)
    pixel_values = pixel_values.to(device=param.device, dtype=param.dtype)
    input_ids, attention_mask = input_ids.to(param.device), attention_mask.to(param.device)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), saving_attention(cross):
            with torch.no_grad():  # layers below the recorded one need no graph
                image_embeds = model.visual_encoder(pixel_values)
                text = model.encode_text(input_ids, attention_mask) if family == "albef" else None
            # The image states are the leaf the map depends on, so frozen models work too.
            image_embeds = image_embeds.detach().requires_grad_(True)
            if family == "albef":
                logits = model.itm_logits(image_embeds, text, attention_mask)
            else:
                ids = with_first_token(input_ids, model.config.text.enc_token_id)
                logits = model.itm_logits(image_embeds, ids, attention_mask)
            probs = cross.get_attention_map()
            if probs.shape[-1] != 1 + grid * grid:
                raise ValueError(f"the image has {probs.shape[-1]} tokens, expected [CLS] + {grid}x{grid} patches")
            torch.autograd.grad(logits[:, 1].sum(), probs)  # fills cross.attn_gradients (its hook)
            grads = cross.get_attn_gradients()
            with torch.no_grad():
                cam = probs[..., 1:].float() * grads[..., 1:].float().clamp(min=0)  # [B, H, Lq, P]
                cam = cam.mean(dim=1)  # over heads -> [B, Lq, P]
                w = token_weights(attention_mask, family)  # padding and excluded tokens weigh 0
                out = torch.einsum("blp,bl->bp", cam, w)
    finally:
        model.train(was_training)
    return out.reshape(b, grid, grid)


__all__ = ["DEFAULT_BLOCK", "cross_attention_layer", "default_layer", "gradcam", "token_weights"]
