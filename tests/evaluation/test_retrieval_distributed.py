"""Row sharding of the ITM re-rank across 2 gloo processes equals the single-process result."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from blipx.evaluation import encode_for_retrieval, rerank_with_itm
from blipx.models import create_model
from blipx.tokenizer import blip_tokenizer

TEXTS = [f"a {c} {s}" for c in ("red", "blue", "green") for s in ("circle", "square", "triangle")]


def _scores():
    torch.manual_seed(0)
    model = create_model("blip_tiny", "retriever").eval()
    pixel_values = torch.randn(7, 3, 32, 32)
    enc = encode_for_retrieval(model, pixel_values, TEXTS, blip_tokenizer())
    return rerank_with_itm(model, enc, k_test=4, itm_batch_size=8)


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        i2t, t2i, _ = _scores()
        torch.save((i2t, t2i), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_give_the_single_process_scores(tmp_path):
    i2t, t2i, _ = _scores()
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got_i2t, got_t2i = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got_i2t, i2t, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_t2i, t2i, atol=1e-5, rtol=1e-5)
