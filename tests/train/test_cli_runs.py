"""`blipx pretrain` / `blipx finetune` / `blipx eval` end to end on the synthetic shapes data."""

import contextlib
import json

import pytest

from blipx.cli import main

SMALL = ["max_steps=3", "batch_size=4", "log_every=1", "queue_size=16", 'data_options={"num_samples": 16}']


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder to run the README's commands in, with their default output folders."""
    return tmp_path_factory.mktemp("work")


def run_in(folder, argv):
    with contextlib.chdir(folder):
        return main(argv)


@pytest.fixture(scope="module")
def pretrained(workdir):
    # The README's first command (smaller): its outputs go to runs/blip_pretrain.
    assert run_in(workdir, ["pretrain", "--no-progress", "task=blip_pretrain", "data=shapes", *SMALL]) == 0
    return workdir / "runs" / "blip_pretrain"


def test_pretrain_writes_run_outputs(pretrained, capsys):
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


def test_readme_finetune_keeps_the_pretraining_run(pretrained, workdir):
    """`blipx finetune task=blip_retrieval init=runs/blip_pretrain/model` as the README writes
    it: its own folder, runs/blip_retrieval; the pretraining run is left as it was (before, both
    defaulted to runs/blipx and the fine-tuning overwrote the pretraining's model and checkpoints)."""
    before = {p: p.read_bytes() for p in pretrained.rglob("*") if p.is_file()}
    rc = run_in(workdir, ["finetune", "--no-progress", "task=blip_retrieval", "init=runs/blip_pretrain/model",
                          "max_steps=2", "batch_size=4", "queue_size=8", 'data_options={"num_samples": 8}'])
    assert rc == 0
    assert (workdir / "runs" / "blip_retrieval" / "model" / "model.safetensors").is_file()
    assert {p: p.read_bytes() for p in pretrained.rglob("*") if p.is_file()} == before


def test_resume_into_another_tasks_folder_says_why(pretrained, capsys):
    """Before: TypeError ('set' object is not subscriptable) from the mismatch error itself."""
    rc = main(["finetune", "--no-progress", "task=blip_caption", "resume=true", f"out_dir={pretrained}",
               f"init={pretrained / 'model'}", "batch_size=4", 'data_options={"num_samples": 8}'])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"{pretrained} holds a blip_pretrain run (checkpoint-3)" in err and "not a blip_caption run" in err
    assert "runs/blip_caption" in err  # where a blip_caption run goes by default


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_a_bare_command_prints_usage_instead_of_training(command, tmp_path, capsys, monkeypatch):
    import blipx.train.run

    monkeypatch.setattr(blipx.train.run, "run_training", lambda *a, **k: pytest.fail("a bare command started a run"))
    assert run_in(tmp_path, [command]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: blipx {command}") and f"example: blipx {command} " in err
    assert ("data=" if command == "pretrain" else "init=") in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("setting,named", [
    ("batch_size=0", "batch_size=0: must be an integer >= 1"),
    ("grad_accum=0", "grad_accum=0: must be an integer >= 1"),
    ("log_every=0", "log_every=0: must be an integer >= 1"),
    ("amp=fp8", "amp='fp8': must be one of none, bf16, fp16"),
    ("max_steps=abc", "max_steps='abc': expected an integer"),
    ("resume=maybe", "resume='maybe': expected a boolean, one of true/yes/on/1/false/no/off/0"),
])
def test_bad_settings_are_refused_before_the_run(setting, named, tmp_path, capsys):
    assert run_in(tmp_path, ["pretrain", "data=shapes", setting]) == 2
    assert named in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_run_that_reads_no_image_fails_and_claims_nothing(tmp_path, capsys):
    ann = tmp_path / "ann.jsonl"
    ann.write_text("".join(json.dumps({"image": f"img{i}.jpg", "caption": "a red square"}) + "\n" for i in range(8)))
    out = tmp_path / "run"
    rc = main(["pretrain", "--no-progress", f"data={ann}", f"image_root={tmp_path / 'wrong'}", f"out_dir={out}",
               "batch_size=4", "queue_size=8"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "no optimizer step" in captured.err and "8 samples read, 8 skipped: 8 missing" in captured.err
    assert "outputs in" not in captured.out and "model" not in captured.out
    assert not out.exists() or not any(out.iterdir())  # no checkpoint, no model, no metrics


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
