"""blipx.ops.enqueue_: the ITC feature queues' ring write at the official shapes.

Queue: Q = 57600 rows of 256-d fp32 image and text features (BLIP pretraining); each step writes
the momentum features of the whole global batch, N = per-rank batch x world size (after the
all-gather, which every provider needs alike and is left out). Providers, all writing both queues:
- official: ALBEF/BLIP ``_dequeue_and_enqueue`` (salesforce/BLIP models/blip_pretrain.py): two
  [256, Q] queues, ``ptr = int(self.queue_ptr)`` (a host sync on a GPU),
  ``assert queue_size % batch_size == 0``, strided slice writes of ``feats.T``, pointer stored
  back. Shapes that fail its assert (N = 512, 1024, ... do not divide 57600) get a row saying so.
- index_copy_ ring (reference): the torch-only device-side ring, ``index_copy_`` at
  ``(ptr + arange(N)) % Q`` with the pointer kept on the device (``blipx.ops.reference.enqueue_ref``).
- blipx: ``blipx.ops.enqueue_``.
The last two write blipx's [Q, 2, 256] queue (the image and text queues as two views, so one
call writes both), from the features stacked as ``FeatureQueue.enqueue_`` stacks them (timed:
training runs it); "blipx op alone" times the op on features stacked once beforehand. Before
timing, two writes from each provider must leave identical queues. On CUDA, ``host_sync`` says
whether torch's sync debug mode caught a synchronizing call, and ``host_ms`` is the host time of
one call issued behind 1 ms of queued GPU work (a syncing call waits for it; a training step
loses that overlap).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Recorder, bench_main, host_ms_behind_busy_gpu, syncs_host, time_providers  # noqa: E402

import blipx  # noqa: E402
from blipx.ops.reference import enqueue_ref  # noqa: E402

QUEUE, DIM = 57600, 256
OFFICIAL = "official (host ptr, [D, Q] slices)"


class OfficialQueues:
    """The official queue buffers and ``_dequeue_and_enqueue`` body, line for line."""

    def __init__(self, queue_size: int, dim: int, device: torch.device) -> None:
        self.queue_size = queue_size
        self.image_queue = torch.zeros(dim, queue_size, device=device)
        self.text_queue = torch.zeros(dim, queue_size, device=device)
        self.queue_ptr = torch.zeros(1, dtype=torch.long, device=device)

    @torch.no_grad()
    def dequeue_and_enqueue(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> None:
        batch_size = image_feats.shape[0]
        ptr = int(self.queue_ptr)
        assert self.queue_size % batch_size == 0  # for simplicity (the official comment)
        self.image_queue[:, ptr:ptr + batch_size] = image_feats.T
        self.text_queue[:, ptr:ptr + batch_size] = text_feats.T
        ptr = (ptr + batch_size) % self.queue_size
        self.queue_ptr[0] = ptr


def run(quick: bool = False, device: str | None = None) -> tuple[list[dict], list[str]]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # (per-rank batch, world size). BLIP's 75 x 8 GPUs (N = 600) divides 57600; ALBEF's 64 x 8
    # (N = 512, made for its 65536 queue) does not, nor does any N = 2^k above 256.
    shapes = [(64, 1), (75, 8), (512, 8)] if quick else [(b, 1) for b in (64, 128, 256, 512)] + [
        (b, 8) for b in (64, 75, 128, 256, 512)]
    iters = 5 if quick else (100 if dev.type == "cuda" else 20)
    official = OfficialQueues(QUEUE, DIM, dev)
    feat_queue = torch.zeros(QUEUE, 2, DIM, device=dev)  # the FeatureQueue layout
    ptr = torch.zeros(1, dtype=torch.long, device=dev)
    ref_queue, ref_ptr = torch.zeros_like(feat_queue), torch.zeros_like(ptr)
    rec = Recorder("enqueue", dev)
    g = torch.Generator(device="cpu").manual_seed(0)
    for per_rank, world in shapes:
        n = per_rank * world
        img = F.normalize(torch.randn(n, DIM, generator=g), dim=1).to(dev)
        txt = F.normalize(torch.randn(n, DIM, generator=g), dim=1).to(dev)
        stacked = torch.stack([img, txt], dim=1)
        providers = {
            OFFICIAL: lambda: official.dequeue_and_enqueue(img, txt),
            "index_copy_ ring (reference)": lambda: enqueue_ref(ref_queue, ref_ptr, torch.stack([img, txt], dim=1)),
            "blipx": lambda: blipx.ops.enqueue_(feat_queue, ptr, torch.stack([img, txt], dim=1)),
            "blipx op alone (pre-stacked)": lambda: blipx.ops.enqueue_(feat_queue, ptr, stacked),
        }
        common = dict(per_rank=per_rank, world=world, N=n)
        if QUEUE % n:  # the official assert would fire: time the others and say why it is missing
            common["note"] = f"official: assert {QUEUE} % {n} == 0 fails"
            del providers[OFFICIAL]
        # From empty queues, two writes by each provider (the pre-stacked one shares blipx's queue).
        for t in (official.image_queue, official.text_queue, official.queue_ptr, ref_queue, ref_ptr, feat_queue, ptr):
            t.zero_()
        for name, fn in providers.items():
            if name != "blipx op alone (pre-stacked)":
                fn(), fn()
        check_same_writes(official if OFFICIAL in providers else None, ref_queue, ref_ptr, feat_queue, ptr, n)
        rows = time_providers(rec, providers, dev, iters=iters, baseline=OFFICIAL, **common)
        if dev.type == "cuda":
            for row, fn in zip(rows, providers.values()):
                row.update(host_sync=syncs_host(fn, dev), host_ms=host_ms_behind_busy_gpu(fn, dev))
    return rec.rows, ["per_rank", "world", "N", "provider", "ms", "p20_ms", "p80_ms", "speedup", "host_sync", "host_ms",
                      "note", "device"]


def check_same_writes(official: OfficialQueues | None, ref_queue, ref_ptr, feat_queue, ptr, n: int) -> None:
    """The reference ring and blipx must hold the same queue and pointer; so must the official
    queues on the 2N columns two writes fill (comparing only those: the transposed compare of
    the whole [256, Q] queues is slow on a CPU)."""
    if not (torch.equal(ref_queue, feat_queue) and torch.equal(ref_ptr, ptr)):
        raise AssertionError("bench_enqueue: blipx.ops.enqueue_ and the index_copy_ ring wrote different queues")
    if official is None:
        return
    cols = min(2 * n, QUEUE)
    ours = feat_queue[:cols].transpose(0, 1)  # [2, cols, D]: image rows, text rows
    same = torch.equal(official.image_queue[:, :cols].T, ours[0]) and torch.equal(official.text_queue[:, :cols].T, ours[1])
    if not (same and torch.equal(official.queue_ptr, ptr)):
        raise AssertionError("bench_enqueue: the official enqueue and blipx.ops.enqueue_ wrote different queues")


if __name__ == "__main__":
    raise SystemExit(bench_main(run, __doc__))
