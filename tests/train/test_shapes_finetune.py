"""The synthetic fine-tune commands (``python -m blipx.train.shapes_<task>``) run end to end on a
tiny pretraining folder: options, conversion, training, saving, scoring, summary."""

import json

import pytest

from blipx.models import create_model


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    d = tmp_path_factory.mktemp("init") / "model"
    create_model("blip_tiny", "pretrain").save_pretrained(d)
    return d


def test_shapes_finetune_refuses_a_missing_init_in_one_line(tmp_path):
    from blipx.train.shapes_nlvr import main

    with pytest.raises(SystemExit, match="--init: no such model folder .*blipx demo"):
        main(["--init", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])


@pytest.mark.parametrize("name", ["shapes_vqa", "shapes_nlvr", "shapes_ve", "shapes_grounding"])
def test_shapes_finetune_command_writes_its_summary(init, tmp_path, name):
    import importlib

    main = importlib.import_module(f"blipx.train.{name}").main
    out = tmp_path / name
    stages = ["--binding-steps", "3"] if name == "shapes_vqa" else []  # its first stage too
    assert main(["--init", str(init), "--out", str(out), "--steps", "2", "--batch-size", "4",
                 "--train-samples", "16", "--eval-samples", "6", *stages]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["family"] == "blip" and summary["train_samples"] == 16
    assert summary["loss_first"] is not None and summary["loss_first"] > 0
    assert (out / "model" / "model.safetensors").is_file()
    if name == "shapes_vqa":  # the second stage starts from the first one's model
        assert summary["init"] == str(init) and summary["binding"]["steps"] == 3
        assert (out / "binding" / "model" / "model.safetensors").is_file()
        assert summary["binding"]["data"]["min_objects"] == 2
    scores = {"shapes_vqa": lambda: [summary["rank"]["accuracy"], summary["generate"]["accuracy"]],
              "shapes_grounding": lambda: [summary["hits"], summary["before"]["hits"], *summary["after_by_layer"].values()]
              }.get(name, lambda: [summary["accuracy"]])()
    assert all(0.0 <= s <= 100.0 for s in scores)
