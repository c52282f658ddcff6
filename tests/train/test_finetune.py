"""Fine-tuning tasks: captioning with a prompt, retrieval with image-id positives."""

import pytest
import torch

import blipx.train.task as task_module
from blipx.losses import itc_loss, lm_loss
from blipx.models import create_model
from blipx.train import AlbefRetrievalTask, BlipRetrievalTask, CaptionTask, StepContext
from blipx.train.synthetic import RandomPairs, stack_collate

RETRIEVAL = [("blip_tiny", BlipRetrievalTask), ("albef_tiny", AlbefRetrievalTask)]


def batch(model, n=6, per_image=2):
    data = RandomPairs(n, model.config.vision.image_size, captions_per_image=per_image, seed=3)
    return stack_collate([data[i] for i in range(n)])


@pytest.mark.parametrize("name,cls", RETRIEVAL)
def test_retrieval_negatives_never_share_the_image(name, cls, monkeypatch):
    model = create_model(name, "retriever", momentum=True)
    task = cls(model, queue_size=12)
    drawn = []
    real = task_module.sample_itm_negatives
    monkeypatch.setattr(task_module, "sample_itm_negatives", lambda *a, **k: drawn.append(real(*a, **k)) or drawn[-1])
    b = batch(model)
    out = task(b)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and set(out) == {"loss", "loss_itc", "loss_itm"}
    idx = b["image_ids"]
    for pick in (drawn[0].image_for_text, drawn[0].text_for_image):
        assert (pick >= 0).all() and (idx[pick] != idx).all()  # 3 images x 2 captions: always a candidate
    assert task.queue.idx_queue[:6].tolist() == idx.tolist() and task.queue.idx_queue[6:].eq(-100).all()
    assert model.temp.grad is not None and all(p.grad is None for p in model.visual_encoder_m.parameters())


@pytest.mark.parametrize("name,cls", RETRIEVAL)
def test_retrieval_itc_uses_the_queue_before_this_steps_keys(name, cls):
    """ITC with id positives against [momentum batch; queue as it was], then the batch's keys and
    ids are written; the temperature is clamped first (official ``temp.clamp_``)."""
    model = create_model(name, "retriever", momentum=True).eval()
    task = cls(model, queue_size=8)
    with torch.no_grad():
        model.temp.fill_(1e-5)
        task.queue.idx_queue[:3] = torch.tensor([0, 2, 9])  # queued keys of images 0 and 2 are positives too
    before, ids_before = task.queue.feat_queue.clone(), task.queue.idx_queue.clone()
    b = batch(model)
    out = task(b, StepContext(alpha=0.3))
    assert model.temp.item() == pytest.approx(0.001)
    idx = b["image_ids"]
    with torch.no_grad():
        px, ids, mask = b["pixel_values"], b["input_ids"], b["attention_mask"]
        image_feat = model.image_features(model.visual_encoder(px))
        text_feat = model.text_features(model.encode_text(ids, mask))
        mom = model.momentum_features(px, ids, mask)
        expect = itc_loss(image_feat, text_feat, mom.image_feat, mom.text_feat, model.temp, alpha=0.3, idx=idx,
                          image_queue=before[:, 0], text_queue=before[:, 1], idx_queue=ids_before)
    torch.testing.assert_close(out["loss_itc"], expect.loss)
    torch.testing.assert_close(task.queue.image_queue[:6], mom.image_feat)
    assert task.queue.idx_queue[:6].tolist() == idx.tolist() and task.queue.queue_ptr.tolist() == [6]


def test_retrieval_needs_momentum_copies_and_its_family():
    with pytest.raises(TypeError, match="momentum=True"):
        BlipRetrievalTask(create_model("blip_tiny", "retriever"))
    with pytest.raises(TypeError, match="BlipRetrievalTask: model must be a BlipRetriever"):
        BlipRetrievalTask(create_model("albef_tiny", "retriever", momentum=True))


def test_caption_loss_skips_the_prompt():
    model = create_model("blip_tiny", "captioner").eval()
    b = batch(model)
    task = CaptionTask(model, prompt_length=4)
    assert task.ema is None  # a captioner has no momentum copies: nothing to update
    out = task(b)
    ids = b["input_ids"].clone()
    ids[:, 0] = model.config.text.bos_token_id
    targets = ids.masked_fill(ids == 0, -100)
    targets[:, :4] = -100
    with torch.no_grad():
        logits = model(b["pixel_values"], ids, b["attention_mask"]).logits
    torch.testing.assert_close(out["loss_lm"], lm_loss(logits, targets))
    targets[:, :4] = ids[:, :4]  # counting the prompt changes the loss: the exclusion is real
    assert not torch.allclose(out["loss_lm"], lm_loss(logits, targets))


def test_a_missing_batch_key_is_named():
    model = create_model("blip_tiny", "retriever", momentum=True)
    b = batch(model)
    del b["image_ids"]
    with pytest.raises(KeyError, match="missing \\['image_ids'\\]"):
        BlipRetrievalTask(model, queue_size=0)(b)
