"""The VE task against salesforce/ALBEF models/model_ve.py (tests/models/official_ve.py), runs of the
VE and grounding tasks through the trainer, and the ``blipx eval ve`` / ``blipx eval grounding`` CLIs."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from blipx.data import eval_transform
from blipx.data.shapes_ve import ShapesVeDataset
from blipx.data.ve import VeCollator
from blipx.models import create_model
from blipx.tokenizer import tokenizer_for
from blipx.train.config import ConfigError, TrainConfig
from blipx.train.task import StepContext
from blipx.train.ve import VeTask
from tests.models import official_ve as off


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _batch(family, n=6):
    ds = ShapesVeDataset("train", n, image_size=32, transform=eval_transform(32))
    return VeCollator(tokenizer_for(family))([ds[i] for i in range(n)])


def _model(name, **kw):
    torch.manual_seed(0)
    m = create_model(name, "ve", hidden_dropout=0.0, attention_dropout=0.0, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return m


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_albef_ve_loss_and_distillation_match_official(alpha):
    m = _model("albef_tiny", momentum=True)
    with torch.no_grad():  # momentum copies that differ from the online model
        for _, mom in m.momentum_pairs():
            for p in mom.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    ref = copy.deepcopy(m)
    task = VeTask(m, momentum=0.9, copy_momentum=False)
    batch = _batch("albef")
    out = task(batch, StepContext(alpha=alpha))
    # official: online prediction, then _momentum_update, then the momentum prediction
    px, ids, mask, y = (batch[k] for k in ("pixel_values", "input_ids", "attention_mask", "labels"))
    prediction = ref(px, ids, mask).logits
    off.momentum_update(ref.momentum_pairs(), 0.9)
    with torch.no_grad():
        prediction_m = ref(px, ids, mask, momentum=True).logits
    want = off.ve_loss(prediction, prediction_m, y, alpha, distill=True)
    assert torch.allclose(out["loss"], want, rtol=1e-5)
    for (_, mom), (_, mom_ref) in zip(m.momentum_pairs(), ref.momentum_pairs(), strict=True):
        for p, q in zip(mom.parameters(), mom_ref.parameters(), strict=True):
            assert torch.allclose(p, q, atol=1e-6)  # the EMA stepped once, officially
    out["loss"].backward()
    assert m.cls_head[0].weight.grad is not None and m.visual_encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for _, mom in m.momentum_pairs() for p in mom.parameters())


def test_blip_ve_without_momentum_is_cross_entropy():
    m = _model("blip_tiny")
    task = VeTask(m)
    batch = _batch("blip")
    out = task(batch)
    with torch.no_grad():
        want = off.ve_loss(m(batch["pixel_values"], batch["input_ids"], batch["attention_mask"]).logits, None,
                           batch["labels"], 0.4, distill=False)
    assert torch.allclose(out["loss"], want, rtol=1e-5)
    with pytest.raises(TypeError, match="AlbefVe/BlipVe"):
        VeTask(create_model("blip_tiny", "retriever"))


def test_ema_steps_once_per_optimizer_step():
    m = _model("albef_tiny", momentum=True)
    with torch.no_grad():
        m.cls_head[0].weight.add_(1.0)
    task = VeTask(m, momentum=0.5, copy_momentum=False)
    before, online = m.cls_head_m[0].weight.clone(), m.cls_head[0].weight.detach().clone()
    batch = _batch("albef")
    task(batch, StepContext(micro_batch=0, grad_accum=2))
    task(batch, StepContext(micro_batch=1, grad_accum=2))
    assert torch.allclose(m.cls_head_m[0].weight, 0.5 * before + 0.5 * online)


@pytest.mark.parametrize("task", ["albef_ve", "blip_ve", "blip_grounding", "albef_grounding"])
def test_runs_through_the_trainer(tmp_path, task):
    from blipx.train.run import run_training

    family = task.split("_")[0]
    data = "shapes_ve" if task.endswith("_ve") else "shapes_grounding"
    cfg = TrainConfig(task=task, model=f"{family}_tiny", data=data, data_options={"num_samples": 16},
                      max_steps=2, batch_size=4, out_dir=str(tmp_path / task), device="cpu", log_every=1,
                      queue_size=0)
    history = run_training(cfg, progress=False)
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in history)
    saved = json.loads((tmp_path / task / "model" / "config.json").read_text())
    want = {"albef_ve": "AlbefVe", "blip_ve": "BlipVe", "blip_grounding": "BlipRetriever",
            "albef_grounding": "AlbefRetriever"}[task]
    assert saved["architecture"] == want
    if task == "albef_ve":
        assert saved["config"]["momentum"] is True  # distill: True
    if task.endswith("_grounding"):
        assert "loss_itm" in history[0] and "loss_itc" in history[0]


def test_task_needs_a_family_model():
    from blipx.train.run import build_model

    with pytest.raises(ConfigError, match="needs a albef model"):
        build_model(TrainConfig(task="albef_ve", model="blip_tiny", out_dir="/tmp/unused-ve"))


def test_eval_ve_cli(tmp_path, capsys):
    from blipx.cli import main

    create_model("blip_tiny", "ve").save_pretrained(tmp_path / "m")
    assert main(["eval", "ve", "--model", str(tmp_path / "m"), "--num-samples", "9", "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["examples"] == 9 and 0 <= metrics["accuracy"] <= 100
    assert {"contradiction", "neutral", "entailment"} <= set(metrics)


def test_eval_grounding_cli(tmp_path, capsys):
    from blipx.cli import main

    create_model("blip_tiny", "pretrain", image_size=48).save_pretrained(tmp_path / "m")
    assert main(["eval", "grounding", "--model", str(tmp_path / "m"), "--num-samples", "6", "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["expressions"] == 6 and "chance" in metrics
    with pytest.raises(SystemExit):
        main(["eval", "grounding", "--model", str(tmp_path / "m"), "--data", "refcoco+_val.json"])
    assert "--refcoco-data" in capsys.readouterr().err
