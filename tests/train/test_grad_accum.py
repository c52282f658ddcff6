"""Gradient accumulation through the Trainer: one EMA step per optimizer step, queue writes per
micro-batch, one DDP all-reduce pass per optimizer step, and k micro-batches of B/k giving the
gradients of one batch of B for the terms that are not batch-coupled (LM, MLM)."""

import json
import os
from collections import Counter

import pytest
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

import blipx.train.task as task_module
from blipx.models import create_model
from blipx.train import AlbefPretrainTask, BlipPretrainTask
from blipx.train.config import TrainConfig
from blipx.train.distributed import DistInfo
from blipx.train.synthetic import RandomPairs, stack_collate
from blipx.train.trainer import Trainer
from tests.train.ranks import run_ranks

PRETRAIN = [("blip_tiny", BlipPretrainTask, "loss_lm"), ("albef_tiny", AlbefPretrainTask, "loss_mlm")]
MASKED = (2, 5)  # the positions fixed_mask selects


def make_model(name):
    torch.manual_seed(0)
    model = create_model(name, hidden_dropout=0.0, attention_dropout=0.0)  # same function in every run
    with torch.no_grad():  # momentum copies away from the online weights: every EMA step shows
        for n, p in model.named_parameters():
            if n.split(".")[0].endswith("_m"):
                p.add_(0.05 * torch.randn_like(p))
    return model


def full_length_pairs(n, image_size):
    """RandomPairs without padding: every micro-batch holds the same number of LM/MLM tokens."""
    data = RandomPairs(n, image_size, seed=1)
    data.mask.fill_(1)
    data.ids[data.ids == 0] = 1999
    return data


def trainer_for(task, out_dir, data, dist_info=None, **cfg):
    cfg = TrainConfig(out_dir=str(out_dir), epochs=1, lr=1e-3, log_every=1, seed=3, **cfg)
    return Trainer(task, cfg, data, stack_collate, dist=dist_info, log=lambda s: None)


@pytest.mark.parametrize("name,cls,lang", PRETRAIN)
def test_one_ema_step_per_optimizer_step_and_every_micro_batch_enqueued(name, cls, lang, tmp_path):
    model = make_model(name)
    task = cls(model, queue_size=32, momentum=0.9, copy_momentum=False)
    online = [p.detach().clone() for p in model.visual_encoder.parameters()]
    ema_before = [p.detach().clone() for p in model.visual_encoder_m.parameters()]
    t = trainer_for(task, tmp_path, RandomPairs(8, model.config.vision.image_size, seed=1),
                    batch_size=4, grad_accum=2, max_steps=1, queue_size=32)
    t.fit(progress=False)
    assert t.step == 1
    # One step toward the weights before the optimizer step; two (the old per-micro-batch EMA)
    # would give 0.81 * e0 + 0.19 * p0.
    for e0, p0, e in zip(ema_before, online, model.visual_encoder_m.parameters()):
        torch.testing.assert_close(e, 0.9 * e0 + 0.1 * p0)
    assert task.queue.queue_ptr.tolist() == [8]  # both micro-batches' keys went in


def fixed_mask(input_ids, vocab_size, *, mask_prob=0.15, generator=None, **kw):
    """Deterministic stand-in for the random MLM draw, so B and 2 x B/2 mask the same tokens."""
    labels = torch.full_like(input_ids, -100)
    masked = input_ids.clone()
    for j in MASKED:
        labels[:, j] = input_ids[:, j]
        masked[:, j] = 103
    return masked, labels


def language_only(cls, lang):
    """The task's whole step (EMA, queue, ITC, ITM, momentum distillation) with only the LM/MLM
    term backpropagated: ITC/ITM couple the samples of a batch, LM/MLM do not."""

    class LanguageOnly(cls):
        def losses(self, batch, ctx):
            out = super().losses(batch, ctx)
            return {"loss": out[lang], lang: out[lang]}

    return LanguageOnly


def first_step_gradients(name, cls, lang, tmp_path, batch_size, grad_accum):
    model = make_model(name)
    task = language_only(cls, lang)(model, queue_size=16, momentum=0.9, alpha=0.4, copy_momentum=False)
    t = trainer_for(task, tmp_path, full_length_pairs(8, model.config.vision.image_size), batch_size=batch_size,
                    grad_accum=grad_accum, max_steps=1, queue_size=16)
    grads = {}

    def capture(optimizer, args, kwargs):  # the accumulated gradients the optimizer step sees
        grads.update({n: p.grad.clone() for n, p in task.named_parameters() if p.grad is not None})

    t.optimizer.register_step_pre_hook(capture)
    t.fit(progress=False)
    return grads


@pytest.mark.parametrize("name,cls,lang", PRETRAIN)
@pytest.mark.parametrize("k", [2, 4])
def test_k_micro_batches_give_the_big_batch_gradients(name, cls, lang, k, tmp_path, monkeypatch):
    monkeypatch.setattr(task_module, "mask_tokens", fixed_mask)
    big = first_step_gradients(name, cls, lang, tmp_path / "big", batch_size=4, grad_accum=1)
    small = first_step_gradients(name, cls, lang, tmp_path / "small", batch_size=4 // k, grad_accum=k)
    assert big.keys() == small.keys() and any(n.startswith("model.visual_encoder.") for n in big)
    for n in big:
        torch.testing.assert_close(small[n], big[n], rtol=1e-4, atol=1e-6, msg=lambda m: f"{n}: {m}")


WORLD = 2


def _count_worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    result = {}
    for accum in (1, 2):
        model = make_model("blip_tiny")
        task = BlipPretrainTask(model, queue_size=8)
        t = trainer_for(task, os.path.join(out_dir, f"run{accum}"), RandomPairs(16, model.config.vision.image_size,
                        seed=1), DistInfo(rank, WORLD, 0, torch.device("cpu")), batch_size=2, grad_accum=accum,
                        max_steps=2, queue_size=8)
        steps = []

        def counting_hook(state, bucket, t=t, steps=steps):  # one call per bucket all-reduce
            steps.append(t.step)
            return allreduce_hook(state, bucket)

        t.module.register_comm_hook(None, counting_hook)
        t.fit(progress=False)
        checksum = float(sum(p.detach().double().sum() for p in model.parameters() if p.requires_grad))
        result[accum] = {"per_step": sorted(Counter(steps).items()), "checksum": checksum}
        del t
        dist.barrier()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_all_reduces_once_per_optimizer_step(tmp_path):
    run_ranks(_count_worker, tmp_path, WORLD)
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    one, two = res[0]["1"]["per_step"], res[0]["2"]["per_step"]
    # Each optimizer step (0 and 1) runs as many bucket all-reduces with 2 micro-batches as with 1.
    assert [s for s, _ in one] == [s for s, _ in two] == [0, 1]
    assert all(n > 0 for _, n in one) and one == two
    for accum in ("1", "2"):  # and the one pass still synchronises: both ranks hold the same weights
        assert res[0][accum]["checksum"] == pytest.approx(res[1][accum]["checksum"], rel=0, abs=1e-9)
