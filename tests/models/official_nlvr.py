"""Transcriptions of the official NLVR2 code, torch only, reading the weights from a state dict in
the official key names (so the layouts are checked along with the arithmetic):

- salesforce/BLIP models/nlvr_encoder.py (BertEmbeddings / BertSelfAttention / the twin
  BertSelfOutput / BertAttention with a list of encoder states / BertLayer / BertEncoder) and
  models/blip_nlvr.py (``forward``, ``load_checkpoint``);
- salesforce/ALBEF models/xbert.py (the fusion layers' ``encoder_hidden_states[(layer_num -
  fusion_layer) % len(...)]``), models/model_nlvr.py (``forward`` with distillation),
  models/model_pretrain_nlvr.py (``forward``: the text-assignment loop), Pretrain_nlvr.py (the
  load loop that expands the tower to 18 layers).

Eval-mode semantics (no dropout); the image attention masks are the official all-ones masks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _linear(sd, name, x):
    return F.linear(x, sd[name + ".weight"], sd[name + ".bias"])


def _layer_norm(sd, name, x, eps):
    return F.layer_norm(x, (x.shape[-1],), sd[name + ".weight"], sd[name + ".bias"], eps)


def _transpose_for_scores(x, heads):
    new_x_shape = x.size()[:-1] + (heads, x.shape[-1] // heads)
    return x.view(*new_x_shape).permute(0, 2, 1, 3)


def _invert(mask):
    """BertModel.get_extended_attention_mask / invert_attention_mask: (1 - m) * -10000."""
    return (1.0 - mask[:, None, None, :].float()) * -10000.0


def self_attention(sd, prefix, hidden_states, heads, attention_mask, encoder_hidden_states=None,
                   encoder_attention_mask=None):
    """BertSelfAttention.forward (eval): returns the context layer."""
    mixed_query_layer = _linear(sd, prefix + ".query", hidden_states)
    if encoder_hidden_states is not None:
        key_layer = _transpose_for_scores(_linear(sd, prefix + ".key", encoder_hidden_states), heads)
        value_layer = _transpose_for_scores(_linear(sd, prefix + ".value", encoder_hidden_states), heads)
        attention_mask = encoder_attention_mask
    else:
        key_layer = _transpose_for_scores(_linear(sd, prefix + ".key", hidden_states), heads)
        value_layer = _transpose_for_scores(_linear(sd, prefix + ".value", hidden_states), heads)
    query_layer = _transpose_for_scores(mixed_query_layer, heads)
    attention_scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))
    attention_scores = attention_scores / math.sqrt(query_layer.shape[-1])
    if attention_mask is not None:
        attention_scores = attention_scores + attention_mask
    attention_probs = torch.softmax(attention_scores, dim=-1)
    context_layer = torch.matmul(attention_probs, value_layer)
    context_layer = context_layer.permute(0, 2, 1, 3).contiguous()
    return context_layer.view(context_layer.size()[:-2] + (context_layer.shape[-1] * heads,))


def _self_output(sd, prefix, hidden_states, input_tensor, eps):
    """BertSelfOutput (not twin): dense -> dropout -> LayerNorm(+ input)."""
    return _layer_norm(sd, prefix + ".LayerNorm", _linear(sd, prefix + ".dense", hidden_states) + input_tensor, eps)


def _feed_forward(sd, prefix, attention_output, eps):
    intermediate_output = F.gelu(_linear(sd, prefix + ".intermediate.dense", attention_output))
    return _layer_norm(sd, prefix + ".output.LayerNorm",
                       _linear(sd, prefix + ".output.dense", intermediate_output) + attention_output, eps)


def _embeddings(sd, prefix, input_ids, eps, token_type=False):
    seq_length = input_ids.shape[1]
    position_ids = torch.arange(seq_length, device=input_ids.device)[None]
    embeddings = F.embedding(input_ids, sd[prefix + "embeddings.word_embeddings.weight"])
    if token_type:  # ALBEF xbert: token_type_ids default zeros
        type_table = sd[prefix + "embeddings.token_type_embeddings.weight"]
        embeddings = embeddings + F.embedding(torch.zeros_like(input_ids), type_table)
    embeddings = embeddings + F.embedding(position_ids, sd[prefix + "embeddings.position_embeddings.weight"])
    return _layer_norm(sd, prefix + "embeddings.LayerNorm", embeddings, eps)


# ------------------------------------------------------------------ BLIP


def blip_nlvr_text_encoder(sd, input_ids, attention_mask, encoder_hidden_states, *, num_layers, heads, eps=1e-12):
    """nlvr_encoder.py BertModel.forward(mode='multimodal') with a list of two image states."""
    image_atts = [torch.ones(e.shape[:-1], dtype=torch.long) for e in encoder_hidden_states]
    encoder_extended_attention_mask = [_invert(m) for m in image_atts]
    extended_attention_mask = _invert(attention_mask)
    hidden_states = _embeddings(sd, "text_encoder.", input_ids, eps)
    for layer_num in range(num_layers):
        p = f"text_encoder.encoder.layer.{layer_num}"
        ctx = self_attention(sd, p + ".attention.self", hidden_states, heads, extended_attention_mask)
        attention_output = _self_output(sd, p + ".attention.output", ctx, hidden_states, eps)
        # BertAttention(is_cross_attention=True).forward with type(encoder_hidden_states) == list
        self_outputs0 = self_attention(sd, p + ".crossattention.self0", attention_output, heads,
                                       extended_attention_mask, encoder_hidden_states[0],
                                       encoder_extended_attention_mask[0])
        self_outputs1 = self_attention(sd, p + ".crossattention.self1", attention_output, heads,
                                       extended_attention_mask, encoder_hidden_states[1],
                                       encoder_extended_attention_mask[1])
        # BertSelfOutput(twin=True, merge=layer_num >= 6).forward(list)
        hidden_states0 = _linear(sd, p + ".crossattention.output.dense0", self_outputs0)
        hidden_states1 = _linear(sd, p + ".crossattention.output.dense1", self_outputs1)
        if layer_num >= 6:
            h = _linear(sd, p + ".crossattention.output.merge_layer",
                        torch.cat([hidden_states0, hidden_states1], dim=-1))
        else:
            h = (hidden_states0 + hidden_states1) / 2
        attention_output = _layer_norm(sd, p + ".crossattention.output.LayerNorm", h + attention_output, eps)
        hidden_states = _feed_forward(sd, p, attention_output, eps)
    return hidden_states


def cls_head(sd, hidden_state, prefix="cls_head"):
    """nn.Sequential(Linear, ReLU, Linear): keys cls_head.0.* and cls_head.2.*."""
    return _linear(sd, prefix + ".2", F.relu(_linear(sd, prefix + ".0", hidden_state)))


def blip_nlvr_forward(sd, image_embeds, input_ids, attention_mask, targets, enc_token_id, *, num_layers, heads,
                      train=False):
    """blip_nlvr.py BLIP_NLVR.forward after the ViT (``image_embeds`` = visual_encoder(image))."""
    image0_embeds, image1_embeds = torch.split(image_embeds, targets.size(0))
    input_ids = input_ids.clone()
    input_ids[:, 0] = enc_token_id
    output = blip_nlvr_text_encoder(sd, input_ids, attention_mask, [image0_embeds, image1_embeds],
                                    num_layers=num_layers, heads=heads)
    prediction = cls_head(sd, output[:, 0, :])
    if train:
        return F.cross_entropy(prediction, targets)
    return prediction


def blip_load_checkpoint_rewrite(state_dict):
    """blip_nlvr.py load_checkpoint's key loop (before ``load_state_dict(strict=False)``)."""
    state_dict = dict(state_dict)
    for key in list(state_dict.keys()):
        if "crossattention.self." in key:
            new_key0 = key.replace("self", "self0")
            new_key1 = key.replace("self", "self1")
            state_dict[new_key0] = state_dict[key]
            state_dict[new_key1] = state_dict[key]
        elif "crossattention.output.dense." in key:
            new_key0 = key.replace("dense", "dense0")
            new_key1 = key.replace("dense", "dense1")
            state_dict[new_key0] = state_dict[key]
            state_dict[new_key1] = state_dict[key]
    return state_dict


# ------------------------------------------------------------------ ALBEF


def albef_text_encoder(sd, input_ids, attention_mask, encoder_hidden_states, *, num_layers, fusion_layer, heads,
                       eps=1e-12):
    """xbert.py BertModel.forward(mode='multi_modal') with a list of image states (18 layers)."""
    image_atts = [torch.ones(e.shape[:-1], dtype=torch.long) for e in encoder_hidden_states]
    encoder_extended_attention_mask = [_invert(m) for m in image_atts]
    extended_attention_mask = _invert(attention_mask)
    hidden_states = _embeddings(sd, "text_encoder.", input_ids, eps, token_type=True)
    for layer_num in range(num_layers):
        p = f"text_encoder.encoder.layer.{layer_num}"
        ctx = self_attention(sd, p + ".attention.self", hidden_states, heads, extended_attention_mask)
        attention_output = _self_output(sd, p + ".attention.output", ctx, hidden_states, eps)
        if layer_num >= fusion_layer:  # has_cross_attention
            which = (layer_num - fusion_layer) % len(encoder_hidden_states)
            ctx = self_attention(sd, p + ".crossattention.self", attention_output, heads, extended_attention_mask,
                                 encoder_hidden_states[which], encoder_extended_attention_mask[which])
            attention_output = _self_output(sd, p + ".crossattention.output", ctx, attention_output, eps)
        hidden_states = _feed_forward(sd, p, attention_output, eps)
    return hidden_states


def albef_nlvr_forward(sd, image_embeds, input_ids, attention_mask, targets, *, num_layers, fusion_layer, heads,
                       sd_m=None, image_embeds_m=None, alpha=0.0, train=False):
    """model_nlvr.py ALBEF.forward after the ViT(s); ``sd_m`` / ``image_embeds_m``: the momentum
    model (``distill``), with its keys renamed to the online names."""
    image0_embeds, image1_embeds = torch.split(image_embeds, targets.size(0))
    output = albef_text_encoder(sd, input_ids, attention_mask, [image0_embeds, image1_embeds], num_layers=num_layers,
                                fusion_layer=fusion_layer, heads=heads)
    prediction = cls_head(sd, output[:, 0, :])
    if not train:
        return prediction
    if sd_m is None:
        return F.cross_entropy(prediction, targets)
    with torch.no_grad():
        image0_embeds_m, image1_embeds_m = torch.split(image_embeds_m, targets.size(0))
        output_m = albef_text_encoder(sd_m, input_ids, attention_mask, [image0_embeds_m, image1_embeds_m],
                                      num_layers=num_layers, fusion_layer=fusion_layer, heads=heads)
        prediction_m = cls_head(sd_m, output_m[:, 0, :])
    return (1 - alpha) * F.cross_entropy(prediction, targets) - alpha * torch.sum(
        F.log_softmax(prediction, dim=1) * F.softmax(prediction_m, dim=1), dim=1).mean()


def pretrain_nlvr_rewrite(state_dict):
    """Pretrain_nlvr.py's load loop over a pretraining state dict (fusion layer 6)."""
    state_dict = dict(state_dict)
    for key in list(state_dict.keys()):
        if "bert" in key:
            new_key = key.replace("bert.", "")
            if "layer" in new_key:
                keys = new_key.split(".")
                layer_num = int(keys[3])
                # replicate the multimodal encoder's blocks for two images
                if layer_num >= 6:
                    new_layer_num = (layer_num - 6) * 2 + 6
                    keys[3] = str(new_layer_num)
                    new_key_0 = ".".join(keys)
                    state_dict[new_key_0] = state_dict[key]
                    keys[3] = str(new_layer_num + 1)
                    new_key_1 = ".".join(keys)
                    state_dict[new_key_1] = state_dict[key]
                else:
                    state_dict[new_key] = state_dict[key]
            else:
                state_dict[new_key] = state_dict[key]
            del state_dict[key]
    return state_dict


def text_assignment_pairs(image_embeds, image_feat):
    """model_pretrain_nlvr.py ALBEF.forward's sampling loop (global torch RNG): the image pairs
    ``image_inputs`` and ``labels``."""
    with torch.no_grad():
        sim = image_feat @ image_feat.t() / 0.07
        weights = F.softmax(sim, dim=1)
        weights.fill_diagonal_(0)
    image_inputs = [[], []]
    labels = []
    for b in range(image_embeds.size(0)):
        if torch.rand(1) > 1 / 3:
            idx = torch.multinomial(weights[b], 1).item()
            if torch.rand(1) > 0.5:
                image_inputs[0].append(image_embeds[b])
                image_inputs[1].append(image_embeds[idx])
                labels.append(0)
            else:
                image_inputs[1].append(image_embeds[b])
                image_inputs[0].append(image_embeds[idx])
                labels.append(1)
        else:
            idx = torch.multinomial(weights[b], 2)
            image_inputs[0].append(image_embeds[idx[0]])
            image_inputs[1].append(image_embeds[idx[1]])
            labels.append(2)
    image_inputs[0] = torch.stack(image_inputs[0], dim=0)
    image_inputs[1] = torch.stack(image_inputs[1], dim=0)
    return image_inputs, torch.LongTensor(labels)


def text_assignment_loss(sd, image_inputs, labels, input_ids, attention_mask, *, num_layers, fusion_layer, heads):
    """The rest of model_pretrain_nlvr.py ALBEF.forward: ``ta_head`` CE on the fused [CLS]."""
    output = albef_text_encoder(sd, input_ids, attention_mask, image_inputs, num_layers=num_layers,
                                fusion_layer=fusion_layer, heads=heads)
    pred = _linear(sd, "ta_head", output[:, 0, :])
    return F.cross_entropy(pred, labels)
