"""Checkpoints under kills: a run killed at any filesystem step of a save resumes from the newest
valid checkpoint and ends bit-identical to a run never killed; a dangling ``latest`` is reported,
never read as "no checkpoint"; no step is saved twice."""

import os
import random
import shutil
from pathlib import Path

import pytest
import torch

from blipx.train import checkpoint as ckpt
from blipx.train.config import RunError
from tests.train.tiny import PixelTask, assert_same_state, state_of, tiny_trainer


class Killed(BaseException):
    """A simulated kill: not an Exception, so no ``except Exception`` on the way can absorb it."""


# Every call of a save that changes the filesystem, each a possible last act before a kill: the
# three safetensors writers, os.replace (state.json and latest through atomic_write, and the
# folder renames) and shutil.rmtree (scratch folders, set-aside folders, pruning).
FS_STEPS = [(ckpt, "save_model"), (ckpt, "save_file"), (os, "replace"), (shutil, "rmtree")]


def arm_kill(monkeypatch, at: int, calls: list) -> None:
    """Patch the filesystem steps: step number ``at`` (0-based, counted over all of them) raises
    Killed instead of running; every call is recorded in ``calls``."""
    for owner, name in FS_STEPS:
        real = getattr(owner, name)

        def step(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            if len(calls) - 1 == at:
                if _name == "rmtree":  # killed half-way through: some files already gone
                    for f in sorted(p for p in Path(args[0]).rglob("*") if p.is_file())[:1]:
                        f.unlink()
                raise Killed(f"killed at step {at} ({_name})")
            return _real(*args, **kwargs)

        monkeypatch.setattr(owner, name, step)


def resume(out, logs, **kw):
    return tiny_trainer(out, resume=True, log=logs.append, **kw)


def test_kill_at_every_filesystem_step_of_a_save(tmp_path, monkeypatch):
    """The run's last step (3) is also a checkpoint step: the double save that deleted
    checkpoint-3 before renaming its copy in is the case the issue found."""
    settings = dict(max_steps=3, ckpt_every=1, keep_checkpoints=2)
    reference = tiny_trainer(tmp_path / "ref", **settings)
    reference.fit(progress=False)
    expected = state_of(reference)
    n_steps = None
    for at in range(100):
        out = tmp_path / f"kill{at}"
        t = tiny_trainer(out, **settings)
        t.fit(progress=False, stop_at=2)  # checkpoint-1 and -2 on disk
        calls: list = []
        with monkeypatch.context() as m:
            arm_kill(m, at, calls)
            try:
                t.fit(progress=False)
            except Killed:
                pass
            else:
                n_steps = len(calls)  # `at` is past the save's last step: nothing was killed
        chosen, notes = ckpt.find_resume_checkpoint(out)
        assert chosen is not None and ckpt.checkpoint_step(chosen) in (2, 3), (at, calls, notes)
        logs: list[str] = []
        r = resume(out, logs, **settings)
        assert r.step == ckpt.checkpoint_step(chosen)
        if notes:  # what was passed over is said, with the checkpoint taken instead
            assert any(chosen.name in line and "warning" in line for line in logs), logs
        r.fit(progress=False)
        assert_same_state(state_of(r), expected)
        assert ckpt.checkpoint_problem(out / "checkpoint-3") is None
        if n_steps is not None:
            break
    # One save (no second save of step 3): 3 tensor files, state.json, the rename, latest, the
    # pruning of checkpoint-1.
    assert n_steps == 7, calls
    assert at == n_steps


def test_a_latest_pointing_nowhere_falls_back_to_the_newest_valid_checkpoint(tmp_path):
    t = tiny_trainer(tmp_path, max_steps=3, ckpt_every=1, keep_checkpoints=3)
    t.fit(progress=False, stop_at=2)
    shutil.rmtree(tmp_path / "checkpoint-2")  # what the old double save's kill left: latest -> nothing
    (tmp_path / ".checkpoint-2.tmp").mkdir()  # and a scratch folder, never resumed from
    assert (tmp_path / "latest").read_text() == "checkpoint-2"
    logs: list[str] = []
    r = resume(tmp_path, logs, max_steps=3, ckpt_every=1, keep_checkpoints=3)
    assert r.step == 1
    assert any("latest names checkpoint-2, which is missing" in line and "checkpoint-1" in line for line in logs)


def test_a_resume_with_no_valid_checkpoint_left_is_an_error(tmp_path):
    t = tiny_trainer(tmp_path, max_steps=2, ckpt_every=1, keep_checkpoints=1)
    t.fit(progress=False)
    (tmp_path / "checkpoint-2" / "optimizer.safetensors").unlink()
    with pytest.raises(RunError, match=r"no valid checkpoint.*checkpoint-2 is incomplete \(no optimizer"):
        resume(tmp_path, [], max_steps=2)
    shutil.rmtree(tmp_path / "checkpoint-2")
    with pytest.raises(RunError, match="latest names checkpoint-2, which is missing"):
        resume(tmp_path, [], max_steps=2)


def test_a_damaged_checkpoint_is_set_aside_until_its_replacement_is_in(tmp_path, monkeypatch):
    t = tiny_trainer(tmp_path, max_steps=2, ckpt_every=1)
    t.fit(progress=False, stop_at=1)
    (tmp_path / "checkpoint-2").mkdir()  # damaged (empty) folder of the next step
    (tmp_path / "checkpoint-2" / "state.json").write_text("{")
    calls: list = []
    arm_kill(monkeypatch, 4, calls)  # after the 3 tensor files and state.json: at the set-aside
    with pytest.raises(Killed):
        t.fit(progress=False)
    assert calls[-1] == "replace" and ckpt.find_resume_checkpoint(tmp_path)[0].name == "checkpoint-1"
    monkeypatch.undo()
    r = resume(tmp_path, [], max_steps=2, ckpt_every=1)
    r.fit(progress=False)
    assert ckpt.checkpoint_problem(tmp_path / "checkpoint-2") is None
    assert sorted(p.name for p in tmp_path.iterdir() if "checkpoint" in p.name) == ["checkpoint-1", "checkpoint-2"]


def test_no_step_is_saved_twice(tmp_path, monkeypatch):
    saved = []
    real = ckpt.save_checkpoint
    monkeypatch.setattr(ckpt, "save_checkpoint", lambda *a, **k: saved.append(k["step"]) or real(*a, **k))
    tiny_trainer(tmp_path / "a", max_steps=4, ckpt_every=2).fit(progress=False)
    assert saved == [2, 4]
    saved.clear()
    t = tiny_trainer(tmp_path / "b", max_steps=3, ckpt_every=2)
    t.fit(progress=False, stop_at=2)  # stopped on a checkpoint step
    tiny_trainer(tmp_path / "b", max_steps=3, ckpt_every=2, resume=True).fit(progress=False)
    tiny_trainer(tmp_path / "b", max_steps=3, ckpt_every=2, resume=True).fit(progress=False)  # already done
    assert saved == [2, 3]


def test_a_checkpoint_of_another_task_is_refused_with_its_keys(tmp_path):
    t = tiny_trainer(tmp_path, max_steps=1)
    t.fit(progress=False)
    other = PixelTask()
    other.extra = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match=r"does not fit this task \(PixelTask\): 2 missing, e.g. \['extra.bias'"):
        ckpt.load_checkpoint(tmp_path / "checkpoint-1", task=other, optimizer=t.optimizer, scheduler=None)


@pytest.mark.slow
def test_random_kill_campaign(tmp_path, monkeypatch):
    """Runs killed again and again at random filesystem steps, with random checkpoint settings,
    resumed each time: every resume starts from a valid checkpoint no older than the last one
    completed, and the run ends bit-identical to one never killed."""
    rng = random.Random(0)
    for trial in range(25):
        settings = dict(max_steps=rng.randint(3, 9), ckpt_every=rng.randint(1, 3), keep_checkpoints=rng.randint(1, 3),
                        grad_accum=rng.choice([1, 2]), epochs=20)
        ref = tiny_trainer(tmp_path / f"ref{trial}", **settings)
        ref.fit(progress=False)
        out = tmp_path / f"run{trial}"
        completed = 0  # newest step whose save returned
        t = tiny_trainer(out, **settings)
        for _ in range(20):
            calls: list = []
            with monkeypatch.context() as m:
                arm_kill(m, rng.randint(0, 12), calls)
                real_save = ckpt.save_checkpoint

                def save(*a, _real=real_save, **k):
                    nonlocal completed
                    path = _real(*a, **k)
                    completed = k["step"]
                    return path

                m.setattr(ckpt, "save_checkpoint", save)
                try:
                    t.fit(progress=False)
                    break
                except Killed:
                    pass
            t = resume(out, [], **settings)
            assert t.step >= completed, (trial, settings, t.step, completed)
        else:
            t = resume(out, [], **settings)
            t.fit(progress=False)
        assert t.step == settings["max_steps"]
        assert_same_state(state_of(t), state_of(ref))
