"""CLI runs judged by their results, not only their exit codes: `blipx pretrain` on the shapes
data learns (the loss falls by a known factor), the model it writes retrieves far above chance
through `blipx eval retrieval`, and an untrained model of the same shape sits near chance.

Measured on the project's 2-core CPU (150 steps x 32, the demo recipe, one-shape scenes, 100
held-out scenes, positives = the scene's own caption): loss 10.0 (step 50) -> 2.08 (step 150);
R@1 / R@5 / R@10 text 20 / 70 / 94 %, image 23 / 83 / 99 %, r_mean 64.8 (chance r_mean 5.3).
The bands below leave room for platform noise, and none of them is reachable by chance.
"""

import json

import pytest

from blipx.cli import main
from blipx.models import create_model
from blipx.train.recipes import SHAPES_RECIPE

STEPS, EVAL = 150, 100


def _eval(model_dir, out_file) -> dict:
    assert main(["eval", "retrieval", "--model", str(model_dir), "--num-samples", str(EVAL), "--max-objects", "1",
                 "--device", "cpu", "--out", str(out_file)]) == 0
    return json.loads(out_file.read_text().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes-pretrain")
    recipe = [f"{k}={json.dumps(v)}" for k, v in SHAPES_RECIPE.items()]
    rc = main(["pretrain", "--no-progress", "data=shapes", f"out_dir={out}", f"max_steps={STEPS}", "batch_size=32",
               "log_every=50", "warmup_steps=20", "epochs=1000", "amp=none", "seed=0",
               'data_options={"num_samples": 4000, "max_objects": 1}', *recipe])
    assert rc == 0
    return out


def test_pretrain_cli_learns(trained):
    rows = [json.loads(l) for l in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [50, 100, 150]
    assert rows[-1]["loss"] < 0.4 * rows[0]["loss"], rows  # measured 2.08 vs 10.0
    assert rows[-1]["loss_itc"] < 1.5 and rows[-1]["loss_lm"] < 1.5, rows[-1]  # measured 0.74, 0.73


def test_eval_cli_trained_model_retrieves_far_above_chance(trained, tmp_path):
    m = _eval(trained / "model", tmp_path / "trained.jsonl")
    assert m["txt_r10"] >= 70 and m["img_r10"] >= 70, m  # measured 94 / 99; chance 10
    assert m["txt_r5"] >= 40 and m["img_r5"] >= 40, m  # measured 70 / 83; chance 5
    assert m["r_mean"] >= 40, m  # measured 64.8; chance 5.3


def test_eval_cli_untrained_model_sits_near_chance(tmp_path):
    import torch

    torch.manual_seed(0)
    create_model(SHAPES_RECIPE["model"], "retriever").save_pretrained(tmp_path / "untrained")
    m = _eval(tmp_path / "untrained", tmp_path / "untrained.jsonl")
    assert m["txt_r10"] <= 35 and m["img_r10"] <= 35, m  # chance 10
    assert m["r_mean"] <= 20, m  # chance 5.3
