"""Two gloo processes with batch 4 each == one process with batch 8 (first step: losses and
gradients), through DDP, gathered ITC keys and global ITM negatives."""

import os

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

import blipx.train.task as task_module
from blipx.losses import ITMNegatives
from blipx.models import create_model
from blipx.train import BlipPretrainTask
from tests.train.ranks import run_ranks

B, T, WORLD = 4, 9, 2
GRAD_KEYS = ("model.itm_head.weight", "model.vision_proj.weight", "model.text_proj.weight",
             "model.visual_encoder.patch_embed.proj.weight", "model.text_decoder.cls.predictions.bias")


def argmax_negatives(sim_i2t, sim_t2i, *, positive_mask=None, idx=None, idx_all=None, generator=None, hardness=1.0):
    """Deterministic stand-in for the random draw: the hardest negative, so both runs pick alike."""
    if positive_mask is None:
        positive_mask = torch.eye(sim_i2t.shape[0], sim_i2t.shape[1], dtype=torch.bool)
    pick = lambda s: s.detach().masked_fill(positive_mask, float("-inf")).argmax(dim=1)
    return ITMNegatives(image_for_text=pick(sim_t2i), text_for_image=pick(sim_i2t))


def global_batch():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1000, 3000, (WORLD * B, T), generator=g)
    ids[:, 0] = 101
    return torch.randn(WORLD * B, 3, 32, 32, generator=g), ids, torch.ones(WORLD * B, T, dtype=torch.long)


def make_task():
    torch.manual_seed(0)
    model = create_model("blip_tiny").eval()  # no dropout: both runs must compute the same function
    return BlipPretrainTask(model, queue_size=20, global_negatives=True)


def step(task, px, ids, mask):
    out = task({"pixel_values": px, "input_ids": ids, "attention_mask": mask})
    out["loss"].backward()
    params = {k.removeprefix("module."): p for k, p in task.named_parameters()}  # DDP prefixes "module."
    result = {k: v.detach().reshape(1) for k, v in out.items()}
    result.update({k: params[k].grad.detach().clone() for k in GRAD_KEYS})
    return result


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    task_module.sample_itm_negatives = argmax_negatives
    torch.set_num_threads(1)
    px, ids, mask = global_batch()
    local = slice(rank * B, (rank + 1) * B)
    ddp = torch.nn.parallel.DistributedDataParallel(make_task(), broadcast_buffers=False)
    result = step(ddp, px[local], ids[local], mask[local])
    # DDP averaged the gradients; average the losses the same way.
    for k in ("loss", "loss_itc", "loss_itm", "loss_lm"):
        dist.all_reduce(result[k])
        result[k] /= WORLD
    save_file({k: v.contiguous() for k, v in result.items()}, os.path.join(out_dir, f"rank{rank}.safetensors"))
    # Tear down in order: DDP's reducer, then both ranks together. Without this a rank could exit
    # while gloo threads were still working for the other ("terminate called without an active
    # exception", about 1 run in 10 on the 2-core CI machine).
    del ddp
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one_big_batch(tmp_path, monkeypatch):
    run_ranks(_worker, tmp_path, WORLD)
    monkeypatch.setattr(task_module, "sample_itm_negatives", argmax_negatives)
    single = step(make_task(), *global_batch())
    for r in range(WORLD):
        multi = load_file(str(tmp_path / f"rank{r}.safetensors"))
        for k, v in single.items():
            torch.testing.assert_close(multi[k], v, rtol=1e-4, atol=1e-5, msg=lambda m: f"rank {r} {k}: {m}")
