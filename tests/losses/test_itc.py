"""ITC: equality with the official formulas, gradient paths, temperature clamp, queue writes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from blipx.losses import FeatureQueue, albef_alpha, blip_alpha, clamp_temperature_, itc_loss
from tests.losses import official

B, D, Q = 8, 16, 32


def feats(seed=0, b=B, d=D):
    g = torch.Generator().manual_seed(seed)
    return [F.normalize(torch.randn(b, d, generator=g), dim=1) for _ in range(4)]


def test_itc_matches_official_albef_pretrain():
    img, txt, img_m, txt_m = feats()
    queue = FeatureQueue(Q, D)
    temp = torch.tensor(0.07)
    ours = itc_loss(img, txt, img_m, txt_m, temp, alpha=0.4, image_queue=queue.image_queue, text_queue=queue.text_queue)
    ref, sim_i2t, sim_t2i = official.albef_itc(img, txt, img_m, txt_m, temp, 0.4, queue.image_queue.t(), queue.text_queue.t())
    torch.testing.assert_close(ours.loss, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.sim_i2t, sim_i2t)
    torch.testing.assert_close(ours.sim_t2i, sim_t2i)
    assert ours.sim_i2t.shape == (B, B + Q)


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_itc_matches_official_blip_retrieval_with_ids(alpha):
    img, txt, img_m, txt_m = feats(1)
    idx = torch.tensor([3, 3, 5, 7, 7, 7, 9, 11])  # several captions of one image in the batch
    idx_queue = torch.full((Q,), -100, dtype=torch.long)
    idx_queue[:6] = torch.tensor([3, 5, 5, 2, 7, 1])  # and in the queue
    queue = FeatureQueue(Q, D)
    temp = torch.tensor(0.05)
    ours = itc_loss(img, txt, img_m, txt_m, temp, alpha=alpha, image_queue=queue.image_queue,
                    text_queue=queue.text_queue, idx=idx, idx_queue=idx_queue)
    ref = official.blip_retrieval_itc(img, txt, img_m, txt_m, temp, alpha, idx, queue.image_queue.t(),
                                      queue.text_queue.t(), idx_queue.view(1, -1))
    torch.testing.assert_close(ours.loss, ref, rtol=1e-6, atol=1e-6)


def test_itc_in_batch_alpha0_is_cross_entropy_on_diagonal():
    img, txt, img_m, txt_m = feats(2)
    out = itc_loss(img, txt, img_m, txt_m, 0.1)
    labels = torch.arange(B)
    expected = (F.cross_entropy(img @ txt_m.t() / 0.1, labels) + F.cross_entropy(txt @ img_m.t() / 0.1, labels)) / 2
    torch.testing.assert_close(out.loss, expected)


def test_gradients_reach_online_features_and_temp_only():
    img, txt, img_m, txt_m = (t.clone().requires_grad_(True) for t in feats(3))
    temp = torch.nn.Parameter(torch.tensor(0.07))
    queue = FeatureQueue(Q, D)
    out = itc_loss(img, txt, img_m, txt_m, temp, alpha=0.4, image_queue=queue.image_queue, text_queue=queue.text_queue)
    out.loss.backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    assert txt.grad is not None and txt.grad.abs().sum() > 0
    assert temp.grad is not None and temp.grad.abs() > 0
    assert img_m.grad is None and txt_m.grad is None  # momentum features are targets/keys only
    assert not queue.feat_queue.requires_grad


def test_temperature_clamped_in_place_as_official():
    # The tasks clamp before every ITC (tests/train/test_pretrain_task.py checks they do).
    t = torch.nn.Parameter(torch.tensor(0.9))
    clamp_temperature_(t)
    assert t.item() == 0.5 and t.requires_grad
    with torch.no_grad():
        t.fill_(1e-5)
    clamp_temperature_(t)
    assert t.item() == pytest.approx(0.001) and t.requires_grad


def test_queue_matches_official_enqueue_and_wraps():
    queue = FeatureQueue(Q, D, with_ids=True)
    off_img, off_txt = queue.image_queue.t().clone(), queue.text_queue.t().clone()
    off_idx = torch.full((1, Q), -100)
    off_ptr = torch.zeros(1, dtype=torch.long)
    for step in range(6):  # 6 * 8 rows through a 32-row queue: wraps once
        img_m, txt_m = feats(10 + step)[:2]
        idx = torch.arange(B) + 100 * step
        queue.enqueue_(img_m, txt_m, idx)
        official.dequeue_and_enqueue(img_m, txt_m, off_img, off_txt, off_ptr, Q, idx.view(-1, 1), off_idx)
    torch.testing.assert_close(queue.image_queue, off_img.t())
    torch.testing.assert_close(queue.text_queue, off_txt.t())
    assert torch.equal(queue.idx_queue, off_idx.view(-1)) and queue.queue_ptr.item() == off_ptr.item() == 16
    # Unlike the official assert, Q need not be a multiple of the batch: 8 rows into 12 wrap around.
    q12 = FeatureQueue(12, D)
    for step in range(2):
        q12.enqueue_(*feats(20 + step)[:2])
    torch.testing.assert_close(q12.image_queue[:4], feats(21)[0][4:])
    assert q12.queue_ptr.item() == 4


def test_idx_with_queue_but_no_idx_queue_is_an_error():
    img, txt, img_m, txt_m = feats(6)
    queue = FeatureQueue(Q, D)
    with pytest.raises(ValueError, match="idx_queue"):
        itc_loss(img, txt, img_m, txt_m, 0.07, image_queue=queue.image_queue, text_queue=queue.text_queue,
                 idx=torch.arange(B))


def test_alpha_schedules():
    assert albef_alpha(0, 0, 100) == 0.0 and albef_alpha(0, 50, 100) == pytest.approx(0.2)
    assert albef_alpha(1, 0, 100) == pytest.approx(0.4) and albef_alpha(3, 7, 100) == pytest.approx(0.4)
    assert blip_alpha(0, 50, 100) == pytest.approx(0.1) and blip_alpha(1, 50, 100) == pytest.approx(0.3)
    assert blip_alpha(2, 0, 100) == pytest.approx(0.4)
