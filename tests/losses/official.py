"""Direct transcriptions of the official ALBEF/BLIP loss code (salesforce/ALBEF
models/model_pretrain.py, model_retrieval.py, xbert.py; salesforce/BLIP models/blip_retrieval.py,
med.py), kept as close to the originals as a function allows: the same operations in the same
order, the same [D, Q] queue layout, boolean indexing and Python loops included. Only the
random parts are parameterised (fixed negatives, explicit generators) so results can be compared.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def albef_itc(image_feat, text_feat, image_feat_m, text_feat_m, temp, alpha, image_queue, text_queue):
    """ALBEF pretrain ITC; queues in the official [D, Q] layout."""
    with torch.no_grad():
        image_feat_all = torch.cat([image_feat_m.t(), image_queue.clone().detach()], dim=1)
        text_feat_all = torch.cat([text_feat_m.t(), text_queue.clone().detach()], dim=1)
        sim_i2t_m = image_feat_m @ text_feat_all / temp
        sim_t2i_m = text_feat_m @ image_feat_all / temp
        sim_targets = torch.zeros(sim_i2t_m.size()).to(image_feat.device)
        sim_targets.fill_diagonal_(1)
        sim_i2t_targets = alpha * F.softmax(sim_i2t_m, dim=1) + (1 - alpha) * sim_targets
        sim_t2i_targets = alpha * F.softmax(sim_t2i_m, dim=1) + (1 - alpha) * sim_targets
    sim_i2t = image_feat @ text_feat_all / temp
    sim_t2i = text_feat @ image_feat_all / temp
    loss_i2t = -torch.sum(F.log_softmax(sim_i2t, dim=1) * sim_i2t_targets, dim=1).mean()
    loss_t2i = -torch.sum(F.log_softmax(sim_t2i, dim=1) * sim_t2i_targets, dim=1).mean()
    return (loss_i2t + loss_t2i) / 2, sim_i2t, sim_t2i


def blip_retrieval_itc(image_feat, text_feat, image_feat_m, text_feat_m, temp, alpha, idx, image_queue, text_queue,
                       idx_queue):
    """BLIP retrieval ITC with image ids; idx_queue in the official [1, Q] layout."""
    idx = idx.view(-1, 1)
    idx_all = torch.cat([idx.t(), idx_queue.clone().detach()], dim=1)
    pos_idx = torch.eq(idx, idx_all).float()
    sim_targets = pos_idx / pos_idx.sum(1, keepdim=True)
    with torch.no_grad():
        image_feat_m_all = torch.cat([image_feat_m.t(), image_queue.clone().detach()], dim=1)
        text_feat_m_all = torch.cat([text_feat_m.t(), text_queue.clone().detach()], dim=1)
        sim_i2t_m = image_feat_m @ text_feat_m_all / temp
        sim_t2i_m = text_feat_m @ image_feat_m_all / temp
        sim_i2t_targets = alpha * F.softmax(sim_i2t_m, dim=1) + (1 - alpha) * sim_targets
        sim_t2i_targets = alpha * F.softmax(sim_t2i_m, dim=1) + (1 - alpha) * sim_targets
    sim_i2t = image_feat @ text_feat_m_all / temp
    sim_t2i = text_feat @ image_feat_m_all / temp
    loss_i2t = -torch.sum(F.log_softmax(sim_i2t, dim=1) * sim_i2t_targets, dim=1).mean()
    loss_t2i = -torch.sum(F.log_softmax(sim_t2i, dim=1) * sim_t2i_targets, dim=1).mean()
    return (loss_i2t + loss_t2i) / 2


def dequeue_and_enqueue(image_feat, text_feat, image_queue, text_queue, queue_ptr, queue_size, idxs=None, idx_queue=None):
    """Official _dequeue_and_enqueue (single process: concat_all_gather is the identity)."""
    batch_size = image_feat.shape[0]
    ptr = int(queue_ptr)
    assert queue_size % batch_size == 0
    image_queue[:, ptr:ptr + batch_size] = image_feat.T
    text_queue[:, ptr:ptr + batch_size] = text_feat.T
    if idx_queue is not None:
        idx_queue[:, ptr:ptr + batch_size] = idxs.T
    ptr = (ptr + batch_size) % queue_size
    queue_ptr[0] = ptr


def albef_itm(fusion, itm_head, image_embeds, image_atts, text_embeds, text_atts, neg_image_idx, neg_text_idx):
    """ALBEF pretrain ITM with the sampled indices given (the official loops call multinomial)."""
    bs = image_embeds.size(0)
    output_pos = fusion(text_embeds, text_atts, image_embeds, image_atts)
    image_embeds_neg = []
    for b in range(bs):
        neg_idx = int(neg_image_idx[b])
        image_embeds_neg.append(image_embeds[neg_idx])
    image_embeds_neg = torch.stack(image_embeds_neg, dim=0)
    text_embeds_neg, text_atts_neg = [], []
    for b in range(bs):
        neg_idx = int(neg_text_idx[b])
        text_embeds_neg.append(text_embeds[neg_idx])
        text_atts_neg.append(text_atts[neg_idx])
    text_embeds_neg = torch.stack(text_embeds_neg, dim=0)
    text_atts_neg = torch.stack(text_atts_neg, dim=0)
    text_embeds_all = torch.cat([text_embeds, text_embeds_neg], dim=0)
    text_atts_all = torch.cat([text_atts, text_atts_neg], dim=0)
    image_embeds_all = torch.cat([image_embeds_neg, image_embeds], dim=0)
    image_atts_all = torch.cat([image_atts, image_atts], dim=0)
    output_neg = fusion(text_embeds_all, text_atts_all, image_embeds_all, image_atts_all)
    vl_embeddings = torch.cat([output_pos, output_neg], dim=0)
    vl_output = itm_head(vl_embeddings)
    itm_labels = torch.cat([torch.ones(bs, dtype=torch.long), torch.zeros(2 * bs, dtype=torch.long)], dim=0)
    return F.cross_entropy(vl_output, itm_labels), vl_output


def albef_mask(input_ids, vocab_size, targets, generator, mlm_probability=0.15, pad=0, cls=101, mask=103):
    """ALBEF ``mask`` (every draw from ``generator``, as the official does from the default one)."""
    probability_matrix = torch.full(input_ids.shape, mlm_probability)
    masked_indices = torch.bernoulli(probability_matrix, generator=generator).bool()
    masked_indices[input_ids == pad] = False
    masked_indices[input_ids == cls] = False
    targets[~masked_indices] = -100
    indices_replaced = torch.bernoulli(torch.full(input_ids.shape, 0.8), generator=generator).bool() & masked_indices
    input_ids[indices_replaced] = mask
    indices_random = torch.bernoulli(torch.full(input_ids.shape, 0.5), generator=generator).bool() & masked_indices & ~indices_replaced
    random_words = torch.randint(vocab_size, input_ids.shape, dtype=torch.long, generator=generator)
    input_ids[indices_random] = random_words[indices_random]
    return input_ids, targets


def albef_mlm_loss(prediction_scores, labels, soft_labels=None, alpha=0.0):
    """xbert BertForMaskedLM loss with soft labels (soft_labels = softmax(momentum logits))."""
    vocab_size = prediction_scores.shape[-1]
    masked_lm_loss = torch.nn.CrossEntropyLoss()(prediction_scores.view(-1, vocab_size), labels.view(-1))
    if soft_labels is not None:
        loss_distill = -torch.sum(F.log_softmax(prediction_scores, dim=-1) * soft_labels, dim=-1)
        loss_distill = loss_distill[labels != -100].mean()
        masked_lm_loss = (1 - alpha) * masked_lm_loss + alpha * loss_distill
    return masked_lm_loss


def blip_lm_loss(prediction_scores, labels, reduction="mean"):
    """med.py BertLMHeadModel loss."""
    shifted_prediction_scores = prediction_scores[:, :-1, :].contiguous()
    labels = labels[:, 1:].contiguous()
    loss_fct = torch.nn.CrossEntropyLoss(reduction=reduction, label_smoothing=0.1)
    lm_loss = loss_fct(shifted_prediction_scores.view(-1, prediction_scores.shape[-1]), labels.view(-1))
    if reduction == "none":
        lm_loss = lm_loss.view(prediction_scores.size(0), -1).sum(1)
    return lm_loss


def blip_caption_targets(input_ids, prompt_length, bos=30522, pad=0):
    """BLIP_Decoder.forward target construction."""
    input_ids = input_ids.clone()
    input_ids[:, 0] = bos
    decoder_targets = input_ids.masked_fill(input_ids == pad, -100)
    decoder_targets[:, :prompt_length] = -100
    return input_ids, decoder_targets
