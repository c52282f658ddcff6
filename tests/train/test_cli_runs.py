"""`blipx pretrain` / `blipx finetune` / `blipx eval` end to end on the synthetic shapes data."""

import json

import pytest

from blipx.cli import main


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    rc = main(["pretrain", "--no-progress", f"out_dir={out}", "max_steps=3", "batch_size=4", "log_every=1",
               "queue_size=16", 'data_options={"num_samples": 16}'])
    assert rc == 0
    return out


def test_pretrain_writes_run_outputs(pretrained):
    rows = [json.loads(l) for l in (pretrained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert (pretrained / "loss_curves.png").stat().st_size > 1000
    assert (pretrained / "model" / "model.safetensors").is_file()
    assert (pretrained / "latest").read_text() == "checkpoint-3"


def test_eval_retrieval_of_the_pretrained_model(pretrained, capsys, tmp_path):
    out_file = tmp_path / "metrics.jsonl"
    assert main(["eval", "retrieval", "--model", str(pretrained / "model"), "--num-samples", "12", "--k-test", "4",
                 "--device", "cpu", "--out", str(out_file)]) == 0
    metrics = json.loads(out_file.read_text())
    for k in ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean", "itc_r_mean"):
        assert 0.0 <= metrics[k] <= 100.0, k
    assert metrics["txt_r10"] >= metrics["txt_r5"] >= metrics["txt_r1"]
    assert '"txt_r1"' in capsys.readouterr().out


def test_finetune_rejects_a_pretraining_task(tmp_path, capsys):
    assert main(["finetune", f"out_dir={tmp_path}", "task=blip_pretrain"]) == 2
    assert "is not a fine-tuning" in capsys.readouterr().err


def test_finetune_retrieval_from_the_pretrained_model(pretrained, tmp_path):
    rc = main(["finetune", "--no-progress", "task=blip_retrieval", f"init={pretrained / 'model'}",
               f"out_dir={tmp_path}", "max_steps=2", "batch_size=4", "queue_size=8", 'data_options={"num_samples": 8}'])
    assert rc == 0 and (tmp_path / "model" / "model.safetensors").is_file()


def test_demo_runs_end_to_end(tmp_path, capsys):
    summary = tmp_path / "summary.json"
    assert main(["demo", "--out", str(tmp_path / "run"), "--device", "cpu", "--steps", "2", "--batch-size", "4",
                 "--eval-samples", "8", "--json", str(summary), "--max-objects", "2"]) == 0
    data = json.loads(summary.read_text())
    assert data["steps"] == 2 and set(data["caption_accuracy"]) == {"beam3", "nucleus0.9"}
    assert data["shapes_per_scene_max"] == 2
    assert 0 <= data["retrieval"]["txt_r1"] <= 100 and data["retrieval_chance"]["txt_r1"] > 0
    out = capsys.readouterr().out
    assert "chance" in out and f"summary written to {summary}" in out
