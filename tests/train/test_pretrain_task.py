"""BlipPretrainTask / AlbefPretrainTask: one call per step composes EMA, queue, ITC, ITM, LM/MLM."""

import pytest
import torch

from blipx.losses import itc_loss, itm_loss, lm_inputs_and_targets, lm_loss
from blipx.models import create_model
from blipx.train import AlbefPretrainTask, BlipPretrainTask, StepContext

TASKS = [("blip_tiny", BlipPretrainTask, "loss_lm"), ("albef_tiny", AlbefPretrainTask, "loss_mlm")]


def batch(model, b=4, t=9):
    s = model.config.vision.image_size
    ids = torch.randint(1000, 3000, (b, t))
    ids[:, 0] = 101
    mask = torch.ones(b, t, dtype=torch.long)
    if b > 1:
        ids[1, 6:], mask[1, 6:] = 0, 0  # one padded caption
    return {"pixel_values": torch.randn(b, 3, s, s), "input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("name,cls,lang", TASKS)
def test_step_losses_and_gradients(name, cls, lang):
    model = create_model(name)
    task = cls(model, queue_size=10)
    out = task(batch(model))
    assert set(out) == {"loss", "loss_itc", "loss_itm", lang}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in out.values())
    torch.testing.assert_close(out["loss"], out["loss_itc"] + out["loss_itm"] + out[lang])
    out["loss"].backward()
    for prefix in ("visual_encoder.", "text_encoder.", "itm_head.", "vision_proj.", "temp"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix)]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), prefix
    for n, p in model.named_parameters():
        if n.split(".")[0].endswith("_m"):
            assert not p.requires_grad and p.grad is None, n
    assert task.queue.queue_ptr.tolist() == [4]


@pytest.mark.parametrize("name,cls,lang", TASKS)
def test_momentum_and_queue_follow_the_official_order(name, cls, lang):
    model = create_model(name).eval()  # no dropout: the manual recomputation must see the same numbers
    task = cls(model, queue_size=7, momentum=0.9)
    b = batch(model, b=5)
    px, ids, mask = b["pixel_values"], b["input_ids"], b["attention_mask"]
    queue_before = task.queue.feat_queue.clone()
    with torch.no_grad():
        for p in model.visual_encoder.parameters():
            p.add_(0.01)  # online moves away from its copy: the EMA step becomes visible
        model.temp.fill_(1e-5)  # clamped to 0.001 before the ITC (official temp.clamp_)
    ema_before = [p.clone() for p in model.visual_encoder_m.parameters()]
    out = task(b, StepContext(alpha=0.3))
    for e0, p, e in zip(ema_before, model.visual_encoder.parameters(), model.visual_encoder_m.parameters()):
        torch.testing.assert_close(e, 0.9 * e0 + 0.1 * p)
    with torch.no_grad():
        online = model(px, ids, mask)
        mom = model.momentum_features(px, ids, mask)
        expect = itc_loss(online.image_feat, online.text_feat, mom.image_feat, mom.text_feat, model.temp, alpha=0.3,
                          image_queue=queue_before[:, 0], text_queue=queue_before[:, 1])
    assert model.temp.item() == pytest.approx(0.001)
    torch.testing.assert_close(out["loss_itc"], expect.loss)
    # 5 rows written at 0..4 of a 7-row ring, then the pointer sits at 5.
    torch.testing.assert_close(task.queue.image_queue[:5], mom.image_feat)
    torch.testing.assert_close(task.queue.text_queue[:5], mom.text_feat)
    assert torch.equal(task.queue.feat_queue[5:], queue_before[5:])
    assert task.queue.queue_ptr.tolist() == [5]
    if name == "blip_tiny":
        _, targets = lm_inputs_and_targets(ids)
        torch.testing.assert_close(out["loss_lm"], lm_loss(online.lm_logits, targets))


@pytest.mark.parametrize("name,cls,lang", TASKS)
def test_later_micro_batches_skip_the_ema_but_write_the_queue(name, cls, lang):
    model = create_model(name).eval()
    task = cls(model, queue_size=12, momentum=0.9)
    with torch.no_grad():
        for p in model.text_encoder.parameters():
            p.add_(0.01)
    ema_before = [p.clone() for p in model.text_encoder_m.parameters()]
    second = StepContext(micro_batch=1, grad_accum=2)
    assert (second.update_momentum, second.sync_gradients) == (False, True)
    first = StepContext(grad_accum=2)
    assert (first.update_momentum, first.sync_gradients) == (True, False)
    task(batch(model), second)
    assert all(torch.equal(e0, e) for e0, e in zip(ema_before, model.text_encoder_m.parameters()))
    assert task.queue.queue_ptr.tolist() == [4]
    task(batch(model), first)  # the next optimizer step's first micro-batch
    assert not all(torch.equal(e0, e) for e0, e in zip(ema_before, model.text_encoder_m.parameters()))
    assert task.queue.queue_ptr.tolist() == [8]


def test_batch_of_one_drops_its_negatives():
    model = create_model("blip_tiny").eval()
    task = BlipPretrainTask(model, queue_size=0)
    b = batch(model, b=1)
    px, ids, mask = b["pixel_values"], b["input_ids"], b["attention_mask"]
    out = task(b)
    with torch.no_grad():
        pos = model(px, ids, mask).itm_logits
    # No candidate exists for the only row: both negatives are dropped, only the positive counts.
    torch.testing.assert_close(out["loss_itm"], itm_loss(torch.cat([pos, pos, pos]), torch.tensor([False, False])))
    assert torch.isfinite(out["loss"])


def test_wrong_model_rejected():
    with pytest.raises(TypeError, match="BlipPretrainTask: model must be a BlipPretrainer"):
        BlipPretrainTask(create_model("albef_tiny"))


def test_fresh_models_start_near_chance():
    """BERT-style init: the first LM loss is about ln(V) (PyTorch defaults give ~30)."""
    import math

    model = create_model("blip_tiny").eval()
    assert all(torch.equal(p, q) for p, q in zip(model.visual_encoder.parameters(), model.visual_encoder_m.parameters()))
    out = BlipPretrainTask(model, queue_size=0)(batch(model))
    assert out["loss_lm"] < math.log(model.config.text.vocab_size) + 1.0
