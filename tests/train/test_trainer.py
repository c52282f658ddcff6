"""Trainer: bit-exact resume on CPU, schedules, parameter groups, logging."""

import json

import pytest
import torch
from torch import nn

from blipx.models import create_model
from blipx.train import BlipPretrainTask
from blipx.train import checkpoint as ckpt
from blipx.train.config import ConfigError, RunError, TrainConfig, load_config
from blipx.train.optim import lr_factor, param_groups
from blipx.train.synthetic import RandomPairs, stack_collate
from blipx.train.task import Task
from blipx.train.trainer import EpochSampler, Trainer
from tests.train import tiny
from tests.train.tiny import SIZE, tiny_trainer


def make_trainer(out_dir, **overrides):
    cfg = TrainConfig(out_dir=str(out_dir), batch_size=4, epochs=3, queue_size=10, log_every=1, lr=1e-3,
                      warmup_steps=2, **overrides)
    torch.manual_seed(0)
    model = create_model("blip_tiny")
    task = BlipPretrainTask(model, queue_size=cfg.queue_size)
    data = RandomPairs(10, model.config.vision.image_size, seed=1)  # 2 batches per epoch, 2 samples dropped
    return Trainer(task, cfg, data, stack_collate, log=lambda s: None)


def test_resume_is_bit_exact(tmp_path):
    full = make_trainer(tmp_path / "a", max_steps=5)
    hist_full = full.fit(progress=False)

    first = make_trainer(tmp_path / "b", max_steps=5)
    first.fit(progress=False, stop_at=3)  # "killed" mid-epoch 1, after its checkpoint
    second = make_trainer(tmp_path / "b", max_steps=5, resume=True)
    assert (second.step, second.epoch, second.batch_in_epoch) == (3, 1, 1)
    hist_resumed = second.fit(progress=False)

    assert [r["loss"] for r in hist_full[3:]] == [r["loss"] for r in hist_resumed]
    a, b = full.task.state_dict(), second.task.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    params_a = [p for g in full.optimizer.param_groups for p in g["params"]]
    params_b = [p for g in second.optimizer.param_groups for p in g["params"]]
    for pa, pb in zip(params_a, params_b, strict=True):
        sa, sb = full.optimizer.state[pa], second.optimizer.state[pb]
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert full.scheduler.get_last_lr() == second.scheduler.get_last_lr()
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]  # the resumed run continues the log, no step twice


def test_fresh_run_into_a_used_folder_starts_a_new_log(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 7, "loss": 8.0}\n')
    make_trainer(tmp_path, max_steps=2).fit(progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["loss"] != 9.0


def test_checkpoint_files_and_logs(tmp_path):
    t = make_trainer(tmp_path, max_steps=2, ckpt_every=1, keep_checkpoints=1)
    t.fit(progress=False)
    dirs = sorted(p.name for p in tmp_path.glob("checkpoint-*"))
    assert dirs == ["checkpoint-2"] and (tmp_path / "latest").read_text() == "checkpoint-2"
    assert not list(tmp_path.glob(".checkpoint-*"))  # no temp leftovers
    files = sorted(p.name for p in (tmp_path / "checkpoint-2").iterdir())
    assert files == ["optimizer.safetensors", "rng.safetensors", "state.json", "task.safetensors"]
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert {"loss", "loss_itc", "loss_itm", "loss_lm", "lr", "alpha", "images_per_s"} <= rows[0].keys()


def test_epoch_sampler_shards_and_resumes():
    full = list(EpochSampler(10, 2, seed=3, epoch=1))
    assert sorted(full) != full and len(full) == 10
    assert list(EpochSampler(10, 2, seed=3, epoch=1, start_batch=2)) == full[4:]
    r0 = list(EpochSampler(11, 2, seed=3, epoch=0, rank=0, world=2))
    r1 = list(EpochSampler(11, 2, seed=3, epoch=0, rank=1, world=2))
    assert len(r0) == len(r1) == 4 and not set(r0) & set(r1)
    assert list(EpochSampler(10, 2, 3, 1)) != list(EpochSampler(10, 2, 3, 2))


def test_schedules_and_groups():
    cfg = TrainConfig(lr=1e-4, min_lr=1e-6, warmup_steps=10, warmup_lr=1e-6, schedule="cosine")
    assert lr_factor(0, cfg, 100, 1000) == pytest.approx(0.01)
    assert lr_factor(10, cfg, 100, 1000) == pytest.approx(1.0)
    assert lr_factor(1000, cfg, 100, 1000) == pytest.approx(0.01)
    step = TrainConfig(lr=3e-4, min_lr=1e-6, schedule="step", step_decay=0.9)
    assert lr_factor(250, step, 100, 1000) == pytest.approx(0.81)
    model = create_model("albef_tiny")
    albef = param_groups(model, 0.02, decay_norm_and_bias=False)
    decayed = {id(p) for p in albef[0]["params"]}
    assert id(model.temp) in decayed and id(model.itm_head.bias) not in decayed
    assert all(p.requires_grad for g in albef for p in g["params"])  # momentum copies excluded
    blip = param_groups(model, 0.05, decay_norm_and_bias=True)
    assert len(blip) == 1


class _TwoLayerTask(Task):
    inputs = ("pixel_values",)

    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__(nn.Sequential(nn.Linear(3 * SIZE * SIZE, 4), nn.Linear(4, 1)))

    def losses(self, batch, ctx):
        loss = self.model(batch["pixel_values"].flatten(1)).pow(2).mean()
        return {"loss": loss}


def test_freeze_keeps_the_named_modules_as_loaded_and_trains_the_rest(tmp_path):
    task = _TwoLayerTask()
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    trainer = tiny_trainer(tmp_path / "run", task=task, freeze=["0"], epochs=1)
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == \
        {id(p) for p in task.model[1].parameters()}
    trainer.fit(progress=False)
    after = task.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in ("0.weight", "0.bias"))
    assert not torch.equal(before["1.weight"], after["1.weight"])
    with pytest.raises(ConfigError, match="freeze: Sequential has no module 'vit'"):
        tiny_trainer(tmp_path / "bad", task=_TwoLayerTask(), freeze=["vit"])
    with pytest.raises(ConfigError, match="freeze="):
        TrainConfig(freeze=[""])


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("task: albef_pretrain\nbatch_size: 16\ndata_options: {noise: 0.3}\n")
    cfg = load_config(path, ["lr=3e-4", "amp=bf16", "max_steps=7"])
    assert (cfg.task, cfg.batch_size, cfg.lr, cfg.amp, cfg.max_steps, cfg.data_options) == (
        "albef_pretrain", 16, 3e-4, "bf16", 7, {"noise": 0.3})
    with pytest.raises(ValueError, match="unknown config keys \\['bogus'\\]"):
        load_config(None, ["bogus=1"])


def test_bf16_autocast_with_gradient_accumulation(tmp_path):
    t = make_trainer(tmp_path, max_steps=2, amp="bf16", grad_accum=2)
    hist = t.fit(progress=False)
    assert (t.step, t.epoch, t.batch_in_epoch) == (2, 1, 2)  # 2 micro-batches per step, 2 batches per epoch
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in hist)


def test_streams_webdataset_shards(tmp_path):
    pytest.importorskip("webdataset")
    from blipx.data import ShapesDataset
    from blipx.tokenizer import tokenizer_for
    from blipx.train.run import build_data, build_model, build_task

    shards = ShapesDataset("train", num_samples=12, image_size=32).export_shards(str(tmp_path / "s-%06d.tar"), maxcount=6)
    cfg = TrainConfig(task="blip_pretrain", model="blip_tiny", data=shards[0].replace("000000", "{000000..000001}"),
                      out_dir=str(tmp_path / "run"), batch_size=4, max_steps=3, queue_size=8, log_every=1)
    model = build_model(cfg)
    tok = tokenizer_for("blip")
    data, collate = build_data(cfg, model, tok)
    trainer = Trainer(build_task(cfg, model, tok), cfg, data, collate, log=lambda s: None)
    assert trainer.streaming
    hist = trainer.fit(progress=False)
    assert [r["step"] for r in hist] == [1, 2, 3]


def shapes_augmented(n=12, size=tiny.SIZE * 4):
    """Shapes images through the official train augmentation: random crops, flips, RandAugment."""
    from blipx.data import ShapesDataset, TrainTransform

    transform = TrainTransform(size, randaugment=True, scale=(0.3, 1.0), flip="random")
    return ShapesDataset("train", num_samples=n, image_size=size, transform=transform)


def test_resume_is_bit_exact_with_workers_and_augmentation(tmp_path):
    """Two DataLoader workers, augmentation on, killed mid-epoch: the resumed run sees the same
    augmented pixels as the uninterrupted one (before: the workers' random state was not
    restored, and the losses after the kill differed)."""
    settings = dict(max_steps=5, num_workers=2, epochs=3, batch_size=4)
    full = tiny.tiny_trainer(tmp_path / "a", data=shapes_augmented(), task=tiny.PixelTask(tiny.SIZE * 4), **settings)
    hist_full = full.fit(progress=False)
    first = tiny.tiny_trainer(tmp_path / "b", data=shapes_augmented(), task=tiny.PixelTask(tiny.SIZE * 4), **settings)
    first.fit(progress=False, stop_at=4)  # 3 batches per epoch: killed after batch 1 of epoch 1
    second = tiny.tiny_trainer(tmp_path / "b", data=shapes_augmented(), task=tiny.PixelTask(tiny.SIZE * 4),
                               resume=True, **settings)
    assert (second.step, second.epoch, second.batch_in_epoch) == (4, 1, 1)
    hist_resumed = second.fit(progress=False)
    assert [r["loss"] for r in hist_full[4:]] == [r["loss"] for r in hist_resumed]
    tiny.assert_same_state(tiny.state_of(full), tiny.state_of(second))


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    from blipx.data.transforms import SeededSamples

    data = shapes_augmented(n=3)
    before = torch.get_rng_state()
    a = SeededSamples(data, seed=1, epoch=0)
    forward = [a[i]["image"] for i in range(3)]
    backward = [a[i]["image"] for i in reversed(range(3))][::-1]
    assert all(torch.equal(x, y) for x, y in zip(forward, backward))  # order does not matter
    assert not torch.equal(forward[0], SeededSamples(data, seed=1, epoch=1)[0]["image"])  # epochs differ
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random stream is untouched


class Unreadable(torch.utils.data.Dataset):
    """Every sample an image that could not be read (a wrong image_root)."""

    def __len__(self):
        return 6

    def __getitem__(self, i):
        from blipx.data.images import MISSING, Skipped

        return Skipped(MISSING, f"/nowhere/{i}.jpg")


def test_a_run_with_no_optimizer_step_is_an_error_and_saves_nothing(tmp_path):
    from blipx.data import ImageTextCollator

    t = tiny.tiny_trainer(tmp_path, data=Unreadable(), collate=ImageTextCollator(tokenizer=None), max_steps=3,
                          epochs=5)
    with pytest.raises(RunError, match=r"every sample of epoch 0 was skipped \(6 samples read, 6 skipped: 6 missing\)"):
        t.fit(progress=False)
    assert list(tmp_path.iterdir()) == []  # no checkpoint-0 for a fixed re-run to "resume" from


def test_a_run_never_writes_into_another_runs_folder(tmp_path):
    caption_run = tiny.tiny_trainer(tmp_path, task_name="blip_caption", max_steps=1)
    caption_run.fit(progress=False)
    files = {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    with pytest.raises(RunError, match=f"{tmp_path} holds a blip_caption run \\(checkpoint-1\\); resume=true"):
        tiny.tiny_trainer(tmp_path, task_name="blip_retrieval", max_steps=1)
    with pytest.raises(RunError, match="holds a blip_caption run"):  # nor a fresh run of the same task
        tiny.tiny_trainer(tmp_path, task_name="blip_caption", max_steps=1)
    with pytest.raises(RunError, match="resume=true: .* holds a blip_caption run .*not a blip_retrieval run"):
        tiny.tiny_trainer(tmp_path, task_name="blip_retrieval", max_steps=1, resume=True)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == files  # untouched
    replaced = tiny.tiny_trainer(tmp_path, task_name="blip_retrieval", max_steps=2, ckpt_every=2, overwrite=True)
    replaced.fit(progress=False)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]
    assert ckpt.read_state(tmp_path / "checkpoint-2")["config"]["task"] == "blip_retrieval"
