"""Cross-rank gathers on 2 CPU processes (gloo): values, gradient rule, queue writes."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from blipx.losses import FeatureQueue, all_gather_with_grad, concat_all_gather, world_info

        assert world_info() == (rank, world)
        x = torch.full((3, 2), float(rank + 1), requires_grad=True)
        gathered = concat_all_gather(x)
        assert not gathered.requires_grad and gathered[:, 0].tolist() == [1, 1, 1, 2, 2, 2]
        # loss_r = sum(c_r * gather(x)); rank r's grad must be sum over ranks of c_r'[own slice].
        c = torch.arange(12.0).view(6, 2) * (rank + 1)
        (all_gather_with_grad(x) * c).sum().backward()
        expected = (torch.arange(12.0).view(6, 2) * 3)[3 * rank : 3 * rank + 3]
        ok_grad = torch.equal(x.grad, expected)
        q = FeatureQueue(8, 2, with_ids=True)
        q.enqueue_(x.detach(), -x.detach(), torch.tensor([10, 11, 12]) + 10 * rank)
        ok_queue = q.queue_ptr.item() == 6 and q.idx_queue[:6].tolist() == [10, 11, 12, 20, 21, 22]
        ok_queue = ok_queue and torch.equal(q.image_queue[:6], gathered)
        results[rank] = bool(ok_grad and ok_queue)
    finally:
        dist.destroy_process_group()


def test_gathers_on_two_gloo_processes():
    ctx = mp.get_context("spawn")
    results = ctx.Manager().dict()
    mp.start_processes(_worker, args=(2, _free_port(), results), nprocs=2, join=True, start_method="spawn")
    assert dict(results) == {0: True, 1: True}
