"""NLVR2 data (official JSON rows, the synthetic shapes-NLVR2 pairs), the NLVR tasks through the
Trainer, and ``blipx eval nlvr2``."""

from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image

from blipx.data import eval_transform
from blipx.data.nlvr import NlvrCollator, NlvrDataset, swap_pair
from blipx.data.shapes import COLORS, SHAPES
from blipx.data.shapes_nlvr import ShapesNlvrDataset, statement_truth
from blipx.models import create_model
from blipx.tokenizer import tokenizer_for
from blipx.train.config import TrainConfig
from blipx.train.nlvr import BlipNlvrTask
from blipx.train.trainer import Trainer

# ---------------------------------------------------------------- shapes-NLVR2


def _own_truth(sentence, left, right):
    """An independent reading of the three statement forms (not the module's parser)."""
    words = sentence.split()
    if words[:2] == ["there", "are"]:
        here, other = (left, right) if words[-2] == "left" else (right, left)
        return len(here) > len(other)
    color = next((w for w in words if w in COLORS), None)
    shape = next((w for w in words if w in SHAPES), None)

    def has(objs):
        return any((color is None or o["color"] == color) and (shape is None or o["shape"] == shape) for o in objs)

    if words[0] == "both":
        return has(left) and has(right)
    assert words[:3] in (["the", "left", "image"], ["the", "right", "image"]), sentence
    return has(left if words[1] == "left" else right)


def _centre_colour(image, o):
    return image.getpixel(o["center"])


@pytest.mark.parametrize("swap", [False, True])
def test_shapes_nlvr_is_balanced_and_true_to_its_scenes(swap):
    torch.manual_seed(0)
    ds = ShapesNlvrDataset("train", 300, max_objects=2, swap=swap)
    labels, kinds, swapped = [], set(), 0
    for i in range(len(ds)):
        s = ds[i]
        labels.append(s["label"])
        kinds.add(s["kind"])
        assert s["label"] == int(statement_truth(s["sentence"], s["objects0"], s["objects1"]))
        assert s["label"] == int(_own_truth(s["sentence"], s["objects0"], s["objects1"]))
        # the objects describe the images they travel with (each shape's centre pixel is its colour)
        for image, objs in ((s["image0"], s["objects0"]), (s["image1"], s["objects1"])):
            assert all(_centre_colour(image, o) == COLORS[o["color"]] for o in objs)
        swapped += s["objects0"] != ds.raw(i)["objects0"]
    assert sum(labels) == 150  # exactly balanced
    assert all(sum(labels[2 * k:2 * k + 2]) == 1 for k in range(150))
    assert kinds == {"side", "both", "count"}
    assert (swapped > 100) == swap
    # deterministic per (seed, split, index); another split holds other pairs
    assert ds.raw(7)["sentence"] == ShapesNlvrDataset("train", 300)[7]["sentence"]
    test = ShapesNlvrDataset("test", 50)
    assert [test.raw(i)["objects0"] for i in range(50)] != [ds.raw(i)["objects0"] for i in range(50)]


def test_shapes_nlvr_false_statements_are_near_misses():
    """Half of the false 'side' statements name a shape that is in the other image, and most
    false 'both' statements hold for exactly one image: the pair must be read, not one image."""
    ds = ShapesNlvrDataset("train", 600, max_objects=2)
    other_side = one_image = both_false = side_false = 0
    for i in range(len(ds)):
        s = ds.raw(i)
        if s["label"]:
            continue
        m = re.fullmatch(r"the (left|right) image contains an? (.+)", s["sentence"])
        if m:
            side_false += 1
            flipped = {"left": "right", "right": "left"}[m.group(1)]
            other_side += statement_truth(f"the {flipped} image contains {s['sentence'].split(' contains ')[1]}",
                                          s["objects0"], s["objects1"])
        elif s["kind"] == "both":
            both_false += 1
            phrase = s["sentence"].split(" contain ")[1]
            one_image += sum(statement_truth(f"the {side} image contains {phrase}", s["objects0"], s["objects1"])
                             for side in ("left", "right")) == 1
    assert 0.35 < other_side / side_false < 0.75
    assert one_image / both_false > 0.6


# ---------------------------------------------------------------- official JSON


def _nlvr_files(tmp_path):
    for name, colour in (("a.png", (200, 10, 10)), ("b.png", (10, 200, 10))):
        Image.new("RGB", (40, 30), colour).save(tmp_path / name)
    rows = [{"images": ["a.png", "b.png"], "sentence": "The left image is RED.", "label": "True"},
            {"images": ["b.png", "a.png"], "sentence": "There are two dogs.", "label": "False"},
            {"images": ["a.png", "missing.png"], "sentence": "Gone.", "label": "True"},
            {"images": ["a.png"], "sentence": "One image only.", "label": "True"}]
    (tmp_path / "dev.json").write_text(json.dumps(rows))
    return tmp_path / "dev.json"


@pytest.mark.parametrize("family", ["blip", "albef"])
def test_nlvr_json_dataset_and_collate(tmp_path, family):
    ds = NlvrDataset(_nlvr_files(tmp_path), tmp_path, transform=eval_transform(32), family=family)
    assert len(ds) == 4
    tok = tokenizer_for(family)
    batch = NlvrCollator(tok)([ds[i] for i in range(4)])
    assert batch["batch_size"] == 2 and batch["num_skipped"] == 2
    assert set(batch["skipped"]) == {"missing", "bad_record"}
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["labels"].tolist() == [1, 0]
    # [left images; right images]: row 0 is a.png (red), row 2 b.png (green)
    assert batch["pixel_values"][0, 0].mean() > batch["pixel_values"][2, 0].mean()
    assert batch["sentences"][0] == "the left image is red"
    assert (batch["input_ids"][:, 0] == 101).all()


def test_official_pair_swap():
    """salesforce/BLIP nlvr_dataset.py: images swap; 'left'/'right' swap only as whole words."""
    assert swap_pair("A", "B", "the left dog faces right") == ("B", "A", "the right dog faces left")
    assert swap_pair("A", "B", "two dogs") == ("B", "A", "two dogs")
    assert swap_pair("A", "B", "leftmost") == ("B", "A", "leftmost")


# ---------------------------------------------------------------- training and evaluation


def _shapes_batches(family, n=16, size=32):
    ds = ShapesNlvrDataset("train", n, image_size=size, transform=eval_transform(size), family=family)
    return ds, NlvrCollator(tokenizer_for(family))


def test_training_steps_reduce_the_loss(tmp_path):
    """A tiny BLIP NLVR model through the Trainer on 16 fixed shapes-NLVR2 statements: the loss
    of the last steps is well below that of the first ones (the pairs are learnt)."""
    torch.manual_seed(0)
    model = create_model("blip_tiny", "nlvr", hidden_size=32, text_num_heads=4, hidden_dropout=0.0,
                         attention_dropout=0.0, initializer_range=0.1)  # 0.02 needs ~3x the steps
    ds, collate = _shapes_batches("blip")
    cfg = TrainConfig(task="blip_nlvr", out_dir=str(tmp_path), batch_size=8, epochs=100, max_steps=40, lr=2e-3,
                      weight_decay=0.0, log_every=1, device="cpu", warmup_steps=0)
    history = Trainer(BlipNlvrTask(model), cfg, ds, collate, log=lambda s: None).fit(progress=False)
    first = sum(r["loss"] for r in history[:4]) / 4
    last = sum(r["loss"] for r in history[-4:]) / 4
    assert first > 0.5 and last < 0.5 * first, (first, last)


@pytest.mark.parametrize("task", ["blip_nlvr", "albef_nlvr", "albef_nlvr_pretrain"])
def test_nlvr_runs_through_run_training(tmp_path, task):
    from blipx.train.run import run_training

    family = task.split("_")[0]
    data = "shapes" if task.endswith("pretrain") else "shapes_nlvr"
    cfg = TrainConfig(task=task, model=f"{family}_tiny", data=data, data_options={"num_samples": 12, "image_size": 32},
                      max_steps=2, batch_size=4, out_dir=str(tmp_path / task), device="cpu", log_every=1,
                      max_text_len=25)
    history = run_training(cfg, progress=False)
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in history)
    key = "loss_ta" if task.endswith("pretrain") else "loss_nlvr"
    assert all(key in r for r in history)
    assert (tmp_path / task / "model" / "config.json").is_file()


def test_eval_nlvr2_cli(tmp_path, capsys):
    from blipx.cli import main

    create_model("blip_tiny", "nlvr").save_pretrained(tmp_path / "m")
    assert main(["eval", "nlvr2", "--model", str(tmp_path / "m"), "--num-samples", "8", "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["statements"] == 8 and 0 <= metrics["accuracy"] <= 100 and metrics["chance"] == 50.0
    assert set(metrics["by_kind"]) <= {"side", "both", "count"}
    # an official-format file (a pretraining folder loads too: the NLVR conversion)
    create_model("blip_tiny", "pretrain").save_pretrained(tmp_path / "pre")
    assert main(["eval", "nlvr2", "--model", str(tmp_path / "pre"), "--data", str(_nlvr_files(tmp_path)),
                 "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["statements"] == 2 and metrics["skipped"] == 2
    assert main(["eval", "nlvr2", "--model", str(tmp_path / "nowhere"), "--device", "cpu"]) == 1
