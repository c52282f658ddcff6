"""A full ITC + ITM + MLM + LM loss step on CUDA raises under sync debug mode 'error' if any
part of it syncs with the host (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from blipx import losses


@pytest.mark.cuda
def test_loss_step_has_no_host_sync():
    dev = torch.device("cuda")
    b, d, lt, v = 16, 32, 12, 100
    img, txt, img_m, txt_m = (F.normalize(torch.randn(b, d, device=dev), dim=1) for _ in range(4))
    img.requires_grad_(True)
    txt.requires_grad_(True)
    temp = torch.nn.Parameter(torch.tensor(0.07, device=dev))
    queue = losses.FeatureQueue(40, d, with_ids=True).to(dev)
    idx = torch.arange(b, device=dev) // 2
    ids = torch.randint(5, v, (b, lt), device=dev)
    ids[:, 0] = 101 % v
    embeds = torch.randn(b, lt, d, device=dev, requires_grad=True)
    atts = torch.ones(b, lt, dtype=torch.long, device=dev)
    head = torch.nn.Linear(d, 2).to(dev)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        # The tasks' ITC sequence (blipx.train.task.ContrastiveTask.contrastive_step): clamp, ITC
        # against [batch; queue] with ids, then the queue write.
        losses.clamp_temperature_(temp)
        out = losses.itc_loss(img, txt, img_m, txt_m, temp, alpha=0.4, image_queue=queue.image_queue,
                              text_queue=queue.text_queue, idx=idx, idx_queue=queue.idx_queue)
        queue.enqueue_(img_m, txt_m, idx)
        negs = losses.sample_itm_negatives(out.sim_i2t[:, :b], out.sim_t2i[:, :b], idx=idx)
        batch = losses.build_itm_inputs(img[:, None], embeds, atts, negs)
        cls = torch.cat([embeds[:, 0] + img, batch["text_embeds"][:, 0] + batch["image_embeds"][:, 0]])
        loss_itm = losses.itm_loss(head(cls), batch["valid"])
        masked, labels = losses.mask_tokens(ids, v, mask_token_id=3, pad_token_id=0, cls_token_id=101 % v)
        logits = torch.randn(b, lt, v, device=dev, requires_grad=True)
        loss_mlm = losses.mlm_loss(logits, labels, torch.randn(b, lt, v, device=dev), 0.4)
        dec, tgt = losses.lm_inputs_and_targets(ids, bos_token_id=4, prompt_length=2)
        loss_lm = losses.lm_loss(logits, tgt)
        (out.loss + loss_itm + loss_mlm + loss_lm).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out.loss).item() and img.grad is not None
