"""Transcriptions of the official VQA code (salesforce/BLIP models/blip_vqa.py, models/med.py;
salesforce/ALBEF models/model_vqa.py, models/xbert.py, VQA.py), kept as close to the originals
as a function allows: Python loops over questions, ``tile`` of the question states, the
per-sequence CE of the decoders. The decoder is passed in as ``decoder(ids, mask, states,
states_mask) -> logits`` (the HF-style module of the originals)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn import CrossEntropyLoss


def tile(x, dim, n_tile):
    """salesforce/BLIP models/blip_vqa.py ``tile`` (= repeat_interleave)."""
    init_dim = x.size(dim)
    repeat_idx = [1] * x.dim()
    repeat_idx[dim] = n_tile
    x = x.repeat(*(repeat_idx))
    order_index = torch.LongTensor(torch.cat([init_dim * torch.arange(n_tile) + i for i in range(init_dim)]))
    return torch.index_select(x, dim, order_index.to(x.device))


def decoder_loss(prediction_scores, labels, label_smoothing):
    """BertLMHeadModel's ``reduction='none'`` loss: shifted CE summed per sequence (BLIP med.py
    with label_smoothing=0.1; ALBEF xbert.py without)."""
    shifted_prediction_scores = prediction_scores[:, :-1, :].contiguous()
    labels = labels[:, 1:].contiguous()
    loss_fct = CrossEntropyLoss(reduction="none", label_smoothing=label_smoothing)
    lm_loss = loss_fct(shifted_prediction_scores.view(-1, prediction_scores.shape[-1]), labels.view(-1))
    return lm_loss.view(prediction_scores.size(0), -1).sum(1)


def rank_answer(decoder, question_states, question_atts, answer_ids, answer_atts, k, pad_token_id, albef):
    """``rank_answer`` of both repositories; BLIP returns ``max_ids``, ALBEF ``(topk_ids, topk_probs)``."""
    num_ques = question_states.size(0)
    start_ids = answer_ids[0, 0].repeat(num_ques, 1)  # bos token
    logits = decoder(start_ids, None, question_states, question_atts)[:, 0, :]
    answer_first_token = answer_ids[:, 1]
    prob_first_token = F.softmax(logits, dim=1).index_select(dim=1, index=answer_first_token)
    topk_probs, topk_ids = prob_first_token.topk(k, dim=1)
    input_ids = []
    input_atts = []
    for b, topk_id in enumerate(topk_ids):
        input_ids.append(answer_ids.index_select(dim=0, index=topk_id))
        input_atts.append(answer_atts.index_select(dim=0, index=topk_id))
    input_ids = torch.cat(input_ids, dim=0)
    input_atts = torch.cat(input_atts, dim=0)
    targets_ids = input_ids.masked_fill(input_ids == pad_token_id, -100)
    question_states = tile(question_states, 0, k)
    question_atts = tile(question_atts, 0, k)
    scores = decoder(input_ids, input_atts, question_states, question_atts)
    if not albef:  # BLIP
        log_probs_sum = -decoder_loss(scores, targets_ids, 0.1)
        log_probs_sum = log_probs_sum.view(num_ques, k)
        max_topk_ids = log_probs_sum.argmax(dim=1)
        max_ids = topk_ids[max_topk_ids >= 0, max_topk_ids]
        return max_ids
    answer_loss = decoder_loss(scores, targets_ids, 0.0)
    answer_loss = answer_loss.view(input_ids.size(0), -1)
    topk_probs = topk_probs.view(-1, 1)
    log_probs = torch.cat([topk_probs.log(), -answer_loss], dim=1)
    log_probs_sum = log_probs.sum(1)
    log_probs_sum = log_probs_sum.view(num_ques, k)
    topk_probs = F.softmax(log_probs_sum, dim=-1)
    topk_probs, rerank_id = topk_probs.topk(k, dim=1)
    topk_ids = torch.gather(topk_ids, 1, rerank_id)
    return topk_ids, topk_probs


def vqa_train_loss(decoder, question_states, question_mask, answer_ids, answer_mask, weights, n, pad_token_id,
                   label_smoothing, logits_m=None, alpha=0.0):
    """``forward(train=True)`` after the question encoder: the per-answer loop over ``n``, the
    decoder's per-sequence loss (ALBEF: mixed with ``soft_labels`` distillation), weighted sum / B."""
    answer_targets = answer_ids.masked_fill(answer_ids == pad_token_id, -100)
    question_states_l, question_atts = [], []
    for b, k in enumerate(n):
        question_states_l += [question_states[b]] * k
        question_atts += [question_mask[b]] * k
    question_states_l = torch.stack(question_states_l, 0)
    question_atts = torch.stack(question_atts, 0)
    prediction_scores = decoder(answer_ids, answer_mask, question_states_l, question_atts)
    lm_loss = decoder_loss(prediction_scores, answer_targets, label_smoothing)
    if logits_m is not None:  # ALBEF xbert: soft_labels = F.softmax(logits_m) of the shifted scores
        soft_labels = F.softmax(logits_m[:, :-1, :], dim=-1)
        shifted_prediction_scores = prediction_scores[:, :-1, :]
        labels = answer_targets[:, 1:]
        loss_distill = -torch.sum(F.log_softmax(shifted_prediction_scores, dim=-1) * soft_labels, dim=-1)
        loss_distill = (loss_distill * (labels != -100)).sum(1)
        lm_loss = (1 - alpha) * lm_loss + alpha * loss_distill
    loss = weights * lm_loss
    return loss.sum() / question_states.size(0)


def albef_vqa_load_rewrite(state_dict):
    """salesforce/ALBEF VQA.py's fine-tuning load loop over a pretraining state dict."""
    state_dict = dict(state_dict)
    for key in list(state_dict.keys()):
        if "bert" in key:
            encoder_key = key.replace("bert.", "")
            state_dict[encoder_key] = state_dict[key]
        # intialize text decoder as multimodal encoder (last 6 layers of model.text_encoder)
        if "text_encoder" in key:
            if "layer" in key:
                encoder_keys = key.split(".")
                layer_num = int(encoder_keys[4])
                if layer_num < 6:
                    del state_dict[key]
                    continue
                else:
                    decoder_layer_num = layer_num - 6
                    encoder_keys[4] = str(decoder_layer_num)
                    encoder_key = ".".join(encoder_keys)
            else:
                encoder_key = key
            decoder_key = encoder_key.replace("text_encoder", "text_decoder")
            state_dict[decoder_key] = state_dict[key]
            del state_dict[key]
    return state_dict
