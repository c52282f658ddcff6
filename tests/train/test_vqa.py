"""VQA tasks on the task contract, the official answer sampling and collate, the shapes-VQA
data, and rank vs generate agreeing once a model has learnt its answers."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from blipx.data import eval_transform
from blipx.data.shapes_vqa import ANSWERS, ShapesVqaDataset, make_question
from blipx.data.images import OUTSIDE_ROOT
from blipx.data.vqa import VqaCollator, VqaDataset, answer_weights, pre_question
from blipx.evaluation.vqa import predict_answers
from blipx.models import create_model
from blipx.tokenizer import tokenizer_for
from blipx.train.config import TrainConfig
from blipx.train.vqa import AlbefVqaTask, BlipVqaTask
from blipx.train.task import StepContext


def test_official_answer_weights():
    answers, weights = answer_weights(["yes"] * 7 + ["no"] * 2 + ["maybe"])
    assert answers == ["yes", "no", "maybe"] and weights == pytest.approx([0.7, 0.2, 0.1])
    assert answer_weights("two", "vg", "blip") == (["two"], [0.2])  # salesforce/BLIP: VG answers weigh 0.2
    assert answer_weights("two", "vg", "albef") == (["two[SEP]"], [0.5])  # ALBEF: 0.5, eos appended


def test_pre_question_per_family():
    q = "What's the man-made object (on the left)?"
    assert pre_question(q, "blip") == "what's the man-made object on the left?"
    assert pre_question(q, "albef") == "whats the man made object on the left"
    assert pre_question(" ".join(["w"] * 60), "blip").count("w") == 50
    assert pre_question(" ".join(["w"] * 60), "albef").count("w") == 30


@pytest.mark.parametrize("family", ["blip", "albef"])
def test_vqa_json_dataset_and_collate(tmp_path, family):
    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / name)
    ann = [{"question_id": 1, "question": "What color?", "answer": ["red"] * 9 + ["pink"], "image": "a.png",
            "dataset": "vqa"},
           {"question_id": 2, "question": "Is it red?", "answer": "yes", "image": "b.png", "dataset": "vg"},
           {"question_id": 3, "question": "Gone?", "answer": ["no"] * 10, "image": "missing.png", "dataset": "vqa"}]
    (tmp_path / "train.json").write_text(json.dumps(ann))
    ds = VqaDataset(tmp_path / "train.json", tmp_path, transform=eval_transform(32), family=family)
    tok = tokenizer_for(family)
    batch = VqaCollator(tok, 35 if family == "blip" else None)([ds[0], ds[1], ds[2]])
    assert batch["batch_size"] == 2 and batch["num_skipped"] == 1  # the missing image is dropped, counted
    assert batch["answer_counts"].tolist() == [2, 1]
    vg = 0.2 if family == "blip" else 0.5
    assert batch["answer_weights"].tolist() == pytest.approx([0.9, 0.1, vg])
    red = tok.convert_tokens_to_ids("red")
    assert batch["answer_ids"][0, :3].tolist() == [101, red, 102]  # [CLS] red [SEP] in both families
    q_last = batch["input_ids"][0, batch["attention_mask"][0].sum() - 1].item()
    assert (q_last == 102) == (family == "blip")  # ALBEF questions have no [SEP]
    # Annotation files come from the web: a path out of the image root is refused unless allowed.
    (tmp_path / "root").mkdir()
    outside = [dict(ann[0], image="../a.png"), dict(ann[0], image=str(tmp_path / "a.png"))]
    (tmp_path / "out.json").write_text(json.dumps(outside))
    refused = VqaDataset(tmp_path / "out.json", tmp_path / "root", family=family)
    assert [refused[i].reason for i in range(2)] == [OUTSIDE_ROOT, OUTSIDE_ROOT]
    opted_in = VqaDataset(tmp_path / "out.json", tmp_path / "root", family=family, allow_outside_root=True)
    assert all(isinstance(opted_in[i]["image"], Image.Image) for i in range(2))


def test_shapes_questions_are_answerable():
    ds = ShapesVqaDataset("train", 300, max_objects=3)
    kinds = set()
    for i in range(300):
        s = ds[i]
        assert s["answers"][0] in ANSWERS and s["gt_answers"] == s["answers"] * 10
        kinds.add(s["type"])
        if s["type"] == "count" and s["question"] == "how many shapes are there?":
            assert s["answers"] == [str(len(s["objects"]))]
    assert kinds == {"color", "shape", "size", "position", "count"}
    # a "where is" question only about a (colour, shape) that occurs once
    import random
    objs = [dict(o, position=p) for o, p in zip([{"color": "red", "shape": "circle", "size": "small"}] * 2,
                                                ["at the top", "on the left"])]
    for seed in range(20):
        assert make_question(objs, random.Random(seed))[2] != "position"


def test_shapes_questions_narrowed_to_multi_shape_scenes_and_some_types():
    """The binding stage of the shapes-VQA fine-tune: only scenes of >= 2 shapes, only the named
    types; the defaults leave every scene and question as they were."""
    narrow = ShapesVqaDataset("train", 200, max_objects=3, min_objects=2, question_types=["color", "shape"])
    samples = [narrow[i] for i in range(200)]
    assert all(len(s["objects"]) >= 2 for s in samples) and {s["type"] for s in samples} == {"color", "shape"}
    for s in samples:  # about the one shape in the named cell
        named = [o for o in s["objects"] if s["question"].endswith(f"{o['position']}?")]
        assert len(named) == 1 and s["answers"] == [named[0][s["type"]]], s
    from blipx.data.shapes import ShapesDataset

    default = ShapesVqaDataset("train", 50, max_objects=3)
    scenes = ShapesDataset("train", 50, image_size=48, max_objects=3)
    assert [default[i]["objects"] for i in range(50)] == [scenes.raw(i)["objects"] for i in range(50)]
    assert {len(default[i]["objects"]) for i in range(50)} == {1, 2, 3}
    for bad in ([], ["colour"], "color"):
        with pytest.raises(ValueError, match="question_types"):
            ShapesVqaDataset("train", 4, question_types=bad)
    with pytest.raises(ValueError, match="min_objects"):
        ShapesVqaDataset("train", 4, max_objects=2, min_objects=3)


def _train_batch(family):
    ds = ShapesVqaDataset("train", 8, image_size=32, transform=eval_transform(32), family=family)
    return VqaCollator(tokenizer_for(family), 35 if family == "blip" else None)([ds[i] for i in range(8)])


def test_blip_task_loss_is_the_models_answer_loss():
    torch.manual_seed(0)
    model = create_model("blip_tiny", "vqa")
    task = BlipVqaTask(model)
    assert set(task.inputs) >= {"answer_ids", "answer_weights", "answer_counts"}
    batch = _train_batch("blip")
    out = task(batch)
    keys = ("pixel_values", "input_ids", "attention_mask", "answer_ids", "answer_mask", "answer_weights",
            "answer_counts")
    model.eval(), task.eval()  # no dropout: the same numbers twice
    assert torch.allclose(task(batch)["loss"], model.answer_loss(*(batch[k] for k in keys)))
    assert torch.isfinite(out["loss"])


def test_albef_task_steps_the_ema_once_per_optimizer_step():
    torch.manual_seed(0)
    model = create_model("albef_tiny", "vqa", momentum=True)
    task = AlbefVqaTask(model, momentum=0.5)
    batch = _train_batch("albef")
    with torch.no_grad():
        for p in model.text_decoder.parameters():
            p.add_(1.0)  # online != momentum: an EMA step moves text_decoder_m halfway
    before = model.text_decoder_m.cls.predictions.transform.dense.weight.clone()
    online = model.text_decoder.cls.predictions.transform.dense.weight.detach().clone()
    task(batch, StepContext(micro_batch=0, grad_accum=2, alpha=0.4))
    task(batch, StepContext(micro_batch=1, grad_accum=2, alpha=0.4))
    after = model.text_decoder_m.cls.predictions.transform.dense.weight
    assert torch.allclose(after, 0.5 * before + 0.5 * online)  # one step, not two


@pytest.mark.parametrize("task", ["blip_vqa", "albef_vqa"])
def test_vqa_run_through_the_trainer(tmp_path, task):
    from blipx.train.run import run_training

    family = task.split("_")[0]
    cfg = TrainConfig(task=task, model=f"{family}_tiny", data="shapes_vqa",
                      data_options={"num_samples": 16, "image_size": 32}, max_steps=2, batch_size=4,
                      out_dir=str(tmp_path / task), device="cpu", log_every=1)
    history = run_training(cfg, progress=False)
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in history)
    assert (tmp_path / task / "model" / "config.json").is_file()


@pytest.mark.parametrize("name", ["blip_tiny", "albef_tiny"])
def test_rank_and_generate_agree_once_answers_are_learnt(name):
    """Easy case: 6 questions on 6 scenes, learnt by heart; ranking the 25 answers and beam
    search (official: beam 3, max 10, min 1) then both return each question's answer."""
    torch.manual_seed(0)
    family = name.split("_")[0]
    model = create_model(name, "vqa", hidden_size=32, text_num_heads=4)
    ds = ShapesVqaDataset("train", 6, image_size=32, transform=eval_transform(32), family=family)
    tok = tokenizer_for(family)
    batch = VqaCollator(tok, 35 if family == "blip" else None)([ds[i] for i in range(6)])
    keys = ("pixel_values", "input_ids", "attention_mask", "answer_ids", "answer_mask", "answer_weights",
            "answer_counts")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):  # ~0.2 s each on a loaded CPU (AdamW over the 30k-word embeddings)
        opt.zero_grad()
        model.answer_loss(*(batch[k] for k in keys)).backward()
        opt.step()
    want = [ds[i]["gt_answers"][0] for i in range(6)]
    loader = DataLoader(ds, batch_size=6, collate_fn=VqaCollator(tok, 35 if family == "blip" else None))
    got = {mode: predict_answers(model, loader, tok, answer_list=ANSWERS, mode=mode)["answers"]
           for mode in ("rank", "generate")}
    assert got["rank"] == want and got["generate"] == want


def test_eval_vqa_cli_on_shapes(tmp_path, capsys):
    from blipx.cli import main

    create_model("blip_tiny", "vqa").save_pretrained(tmp_path / "m")
    assert main(["eval", "vqa", "--model", str(tmp_path / "m"), "--num-samples", "5", "--device", "cpu",
                     "--results", str(tmp_path / "r.json")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["questions"] == 5 and 0 <= metrics["accuracy"] <= 100
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [r["question_id"] for r in rows] == list(range(5)) and all(r["answer"] in ANSWERS for r in rows)
