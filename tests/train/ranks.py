"""Spawns gloo ranks on this machine for the multi-process tests."""

import torch.multiprocessing as mp


def run_ranks(worker, tmp_path, world: int, timeout: float = 300) -> None:
    """Run ``worker(rank, init_file, out_dir)`` in ``world`` spawned processes (they meet through
    a file store in ``tmp_path`` and write their results there); fails if any rank fails."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker, args=(r, str(tmp_path / "init"), str(tmp_path))) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout)
        assert p.exitcode == 0, "a worker failed"
