"""Fine-tuning tasks: captioning with a prompt, retrieval with image-id positives."""

import pytest
import torch

import blipx.train.finetune as ft
from blipx.losses import lm_loss
from blipx.models import create_model
from blipx.train.synthetic import RandomPairs, stack_collate


def batch(model, n=6, per_image=2):
    data = RandomPairs(n, model.config.vision.image_size, captions_per_image=per_image, seed=3)
    return stack_collate([data[i] for i in range(n)])


@pytest.mark.parametrize("name", ["blip_tiny", "albef_tiny"])
def test_retrieval_negatives_never_share_the_image(name, monkeypatch):
    model = create_model(name, "retriever", momentum=True)
    task = ft.RetrievalTask(model, queue_size=12)
    drawn = []
    real = ft.sample_itm_negatives
    monkeypatch.setattr(ft, "sample_itm_negatives", lambda *a, **k: drawn.append(real(*a, **k)) or drawn[-1])
    b = batch(model)
    out = task(**b)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and set(out) == {"loss", "loss_itc", "loss_itm"}
    idx = b["image_ids"]
    for pick in (drawn[0].image_for_text, drawn[0].text_for_image):
        assert (pick >= 0).all() and (idx[pick] != idx).all()  # 3 images x 2 captions: always a candidate
    assert task.queue.idx_queue[:6].tolist() == idx.tolist() and task.queue.idx_queue[6:].eq(-100).all()
    assert model.temp.grad is not None and all(p.grad is None for p in model.visual_encoder_m.parameters())


def test_retrieval_needs_momentum_copies():
    with pytest.raises(TypeError, match="momentum=True"):
        ft.RetrievalTask(create_model("blip_tiny", "retriever"))


def test_caption_loss_skips_the_prompt():
    model = create_model("blip_tiny", "captioner").eval()
    b = batch(model)
    out = ft.CaptionTask(model, prompt_length=4)(**b)
    ids = b["input_ids"].clone()
    ids[:, 0] = model.config.text.bos_token_id
    targets = ids.masked_fill(ids == 0, -100)
    targets[:, :4] = -100
    with torch.no_grad():
        logits = model(b["pixel_values"], ids, b["attention_mask"]).logits
    torch.testing.assert_close(out["loss_lm"], lm_loss(logits, targets))
    targets[:, :4] = ids[:, :4]  # counting the prompt changes the loss: the exclusion is real
    assert not torch.allclose(out["loss_lm"], lm_loss(logits, targets))
