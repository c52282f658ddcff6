"""One training loop for every blipx task (pretraining, retrieval and captioning fine-tuning).

The loop: deterministic per-epoch data order (resumable mid-epoch), autocast, gradient
accumulation, AdamW + LambdaLR, atomic checkpoints, and logs of every loss term, images/s and
(on GPU) MFU. Loss values stay on the device between log steps; the only host syncs are at log
and checkpoint steps (marked).

Gradient accumulation over ``grad_accum = k`` micro-batches: the task gets a ``StepContext``
saying where in the accumulation it is, so it takes its one EMA step per optimizer step (in
the first micro-batch) while writing its queue every micro-batch; under DDP the first k - 1
backwards run in ``no_sync()`` and only the last all-reduces. Each micro-batch's loss is
divided by k, so a term that is a mean over samples or tokens gets the gradient of one batch of
k times the size when the micro-batches hold equal counts (fixed-length text for LM/MLM).

A run owns its ``out_dir``: it refuses a folder that holds another run unless told to resume
it (same task) or replace it (``Trainer._claim_out_dir``); it saves each step at most once; and
a run that cannot take an optimizer step (every sample skipped, no full batch) is a
:class:`~blipx.train.config.RunError` that names the skip counts and saves nothing.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from blipx.data.collate import SkipCounter
from blipx.data.transforms import SeededSamples
from blipx.losses import alpha_warmup
from blipx.train import checkpoint as ckpt
from blipx.train.config import ConfigError, RunError, TrainConfig, default_out_dir
from blipx.train.distributed import DistInfo
from blipx.train.optim import build_optimizer, build_scheduler, freeze_modules
from blipx.train.task import StepContext, Task
from blipx.weights.io import atomic_write

# Dense bf16 tensor-core peaks for MFU (datasheet, FLOP/s).
_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40": 181e12}


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch, this rank's shard of it, from batch ``start_batch`` on.

    Deterministic in (seed, epoch), so a resumed run sees exactly the batches it would have.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                 start_batch: int = 0, shuffle: bool = True) -> None:
        self.n, self.bs, self.seed, self.epoch = n, batch_size, seed, epoch
        self.rank, self.world, self.start, self.shuffle = rank, world, start_batch, shuffle

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()  # CPU tensor: no device sync
        else:
            order = list(range(self.n))
        per_rank = self.n // self.world  # equal shards; the remainder is dropped
        mine = order[self.rank * per_rank:(self.rank + 1) * per_rank]
        usable = (len(mine) // self.bs) * self.bs  # drop_last: static shapes every step
        return mine[self.start * self.bs:usable]

    def __iter__(self):
        return iter(self._indices())

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start) * self.bs

    def batches_per_epoch(self) -> int:
        return (self.n // self.world) // self.bs


def estimate_flops_per_image(model: nn.Module, image_tokens: int, text_tokens: int, text_passes: int) -> float:
    """6 * parameters * tokens (forward + backward), split between the vision and text towers."""
    vis = sum(p.numel() for n, p in model.named_parameters() if n.startswith("visual_encoder.") and p.requires_grad)
    txt = sum(p.numel() for n, p in model.named_parameters()
              if p.requires_grad and not n.startswith("visual_encoder.") and "embeddings.word" not in n)
    return 6.0 * (vis * image_tokens + txt * text_tokens * text_passes)


class Trainer:
    """Runs ``task`` (a :class:`~blipx.train.task.Task`: ``task(batch, ctx)`` returns a dict
    with ``loss`` and ``loss_*`` terms) over ``dataset`` batched by ``collate_fn`` into a dict
    holding at least the task's ``inputs``."""

    def __init__(self, task: Task, cfg: TrainConfig, dataset: Dataset, collate_fn: Callable,
                 dist: DistInfo | None = None, flops_per_image: float | None = None,
                 log: Callable[[str], None] = print) -> None:
        self.cfg, self.dataset, self.collate_fn = cfg, dataset, collate_fn
        self.dist = dist or DistInfo()
        self.device = self.dist.device
        self.task = task.to(self.device)
        # Before DDP, which registers its gradient hooks on the parameters that require grad.
        freeze_modules(getattr(task, "model", task), cfg.freeze)
        self.module = self.dist.wrap(self.task)  # DDP when distributed
        self.optimizer = build_optimizer(self.task, cfg)
        self.streaming = isinstance(dataset, IterableDataset)
        if self.streaming:
            # Shards stream with their own per-rank/per-worker split and have no length: the run
            # is measured in steps, and a resumed run restarts the stream (not bit-exact).
            if cfg.max_steps <= 0:
                raise ConfigError("max_steps=0: a streaming (WebDataset) run needs max_steps > 0")
            self.spb = cfg.max_steps * cfg.grad_accum
        else:
            self.spb = EpochSampler(len(dataset), cfg.batch_size, cfg.seed, 0, self.dist.rank,
                                    self.dist.world).batches_per_epoch()
        if self.spb == 0:
            raise RunError(f"dataset of {len(dataset)} samples gives no full batch of {cfg.batch_size} per rank"
                           f" and {self.dist.world} rank(s) (data={cfg.data!r})")
        self.steps_per_epoch = max(1, self.spb // cfg.grad_accum)
        total = cfg.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps > 0 else total
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch, self.total_steps)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.flops_per_image = flops_per_image
        self.log = log if self.dist.is_main else (lambda s: None)
        self.history: list[dict] = []
        self.skips = SkipCounter()  # samples read and dropped (unreadable images, bad records...)
        self.out_dir = Path(cfg.out_dir)
        self.saved_step: int | None = None  # the step of the newest checkpoint: never saved twice
        path = self._claim_out_dir()
        if path is not None:
            state = ckpt.load_checkpoint(path, task=self.task, optimizer=self.optimizer, scheduler=self.scheduler)
            self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
            self.saved_step = self.step
            self.log(f"resumed from {path} at step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch})")
        if self.dist.is_main:
            self._trim_metrics(self.step)

    def _claim_out_dir(self) -> Path | None:
        """Decide what this run does with ``out_dir``; returns the checkpoint to resume from.

        A folder holds a run when it has checkpoints, a ``latest`` pointer or a saved model. A
        fresh run refuses such a folder unless ``overwrite=true`` (then the old run's outputs
        are deleted first); ``resume=true`` continues the newest valid checkpoint, only of the
        same task, and says what it passed over; a resume with nothing valid to resume from in
        a folder that held a run is an error, never a silent restart from step 0."""
        cfg, out = self.cfg, self.out_dir
        path, notes = ckpt.find_resume_checkpoint(out)
        held_task = ckpt.read_state(path).get("config", {}).get("task") if path is not None else None
        holds_run = path is not None or bool(notes) or (out / "model").exists()
        where = f"{out} holds a {held_task} run ({path.name})" if path is not None else f"{out} holds a run"
        if cfg.resume:
            if path is None:
                if holds_run:
                    raise RunError(f"resume=true: {out} has no valid checkpoint to resume from"
                                   + "".join(f"; {n}" for n in notes) + ". overwrite=true replaces that run")
                self.log(f"resume=true: no checkpoint in {out} yet; starting at step 0")
                return None
            if held_task != cfg.task:
                raise RunError(f"resume=true: {where}, not a {cfg.task} run; pass the out_dir= of the "
                               f"{cfg.task} run (default {default_out_dir(cfg.task)}), or overwrite=true to replace it")
            for n in notes:
                self.log(f"warning: {n}; resuming from {path.name}, the newest valid checkpoint")
            return path
        if holds_run and not cfg.overwrite:
            raise RunError(f"{where}; resume=true continues it, overwrite=true replaces it, or choose another out_dir=")
        if holds_run and self.dist.is_main:
            self.log(f"overwrite=true: deleting the run in {out}")
            for p in [*ckpt.list_checkpoints(out), out / "model"]:
                shutil.rmtree(p, ignore_errors=True)
            for name in ("latest", "metrics.jsonl", "loss_curves.png"):
                (out / name).unlink(missing_ok=True)
        return None

    def _trim_metrics(self, upto: int) -> None:
        """metrics.jsonl keeps only rows up to the step this run starts from: a fresh run into a
        used folder starts an empty log, a resumed one drops rows logged after its checkpoint,
        so the log (and the loss plot) never mixes runs or repeats steps."""
        path = self.out_dir / "metrics.jsonl"
        if not path.is_file():
            return
        rows = [line for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= upto] if upto > 0 else []
        atomic_write(path, lambda tmp: Path(tmp).write_text("".join(r + "\n" for r in rows), encoding="utf-8"))

    def _autocast(self):
        if self.cfg.amp == "none":
            return contextlib.nullcontext()
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[self.cfg.amp]
        return torch.autocast(self.device.type, dtype=dtype)

    def _loader(self, epoch: int, start_batch: int) -> DataLoader:
        if self.streaming:
            return DataLoader(self.dataset, batch_size=self.cfg.batch_size, collate_fn=self.collate_fn,
                              num_workers=self.cfg.num_workers, pin_memory=self.device.type == "cuda")
        sampler = EpochSampler(len(self.dataset), self.cfg.batch_size, self.cfg.seed, epoch, self.dist.rank,
                               self.dist.world, start_batch)
        # A seeded loader generator: worker seeds do not consume (and depend on) the global RNG.
        g = torch.Generator().manual_seed(self.cfg.seed * 7919 + epoch * 104729 + start_batch)
        # Augmentation seeded per (seed, epoch, sample): the same stream with any num_workers and
        # however the run was split by resumes.
        samples = SeededSamples(self.dataset, self.cfg.seed, epoch)
        return DataLoader(samples, batch_size=self.cfg.batch_size, sampler=sampler, collate_fn=self.collate_fn,
                          num_workers=self.cfg.num_workers, drop_last=True, generator=g,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)

    def _to_device(self, batch: dict) -> dict:
        """The task's declared inputs, on the device (the collate may add captions, skip counts...)."""
        missing = [k for k in self.task.inputs if k not in batch]
        if missing:
            raise KeyError(f"the collate gives no {missing}, which {type(self.task).__name__} needs")
        return {k: batch[k].to(self.device, non_blocking=True) for k in self.task.inputs}

    def _sync_context(self, ctx: StepContext):
        """DDP all-reduces gradients only in the backward of the accumulation's last micro-batch."""
        if ctx.sync_gradients or not isinstance(self.module, DistributedDataParallel):
            return contextlib.nullcontext()
        return self.module.no_sync()

    def save(self) -> Path | None:
        """Checkpoint the current step (once: a step already saved is not written again)."""
        if self.saved_step == self.step:
            return None
        self.saved_step = self.step
        if not self.dist.is_main:
            return None
        return ckpt.save_checkpoint(self.out_dir, task=self.task, optimizer=self.optimizer, scheduler=self.scheduler,
                                    step=self.step, epoch=self.epoch, batch_in_epoch=self.batch_in_epoch,
                                    config=self.cfg.to_dict(), keep=self.cfg.keep_checkpoints)

    def fit(self, progress: bool = True, stop_at: int | None = None) -> list[dict]:
        """Train to ``total_steps`` (or stop early at step ``stop_at``, checkpointing as if the
        run had been interrupted there); returns the logged rows."""
        cfg = self.cfg
        end = self.total_steps if stop_at is None else min(stop_at, self.total_steps)
        scaler = torch.amp.GradScaler(enabled=cfg.amp == "fp16")
        sums: dict[str, torch.Tensor] = {}
        count, images, t0 = 0, 0, time.perf_counter()
        bar = None
        if progress and self.dist.is_main:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc=cfg.task, dynamic_ncols=True)
        self.module.train()
        micro, start_step = 0, self.step
        while self.step < end and self.epoch < cfg.epochs:
            read = used = 0  # batches of this epoch pass: read, and with samples that reached the task
            for batch in self._loader(self.epoch, self.batch_in_epoch):
                read += 1
                if "num_skipped" in batch:  # samples dropped by the collate: counted, logged
                    self.skips.update(batch)
                    if batch["batch_size"] == 0:
                        self.batch_in_epoch += 1
                        continue
                used += 1
                batch = self._to_device(batch)
                alpha = alpha_warmup(self.step, cfg.alpha_warmup_steps, cfg.alpha)
                ctx = StepContext(step=self.step, alpha=alpha,
                                  hardness=alpha_warmup(self.step, cfg.itm_hardness_warmup_steps, 1.0),
                                  micro_batch=micro % cfg.grad_accum, grad_accum=cfg.grad_accum)
                with self._sync_context(ctx):  # forward and backward both inside no_sync, as DDP requires
                    with self._autocast():
                        out = self.module(batch, ctx)
                    scaler.scale(out["loss"] / cfg.grad_accum).backward()
                for k, v in out.items():  # device-side running sums: no sync per step
                    sums[k] = sums.get(k, 0) + v.detach().float()
                count += 1
                images += batch["pixel_values"].shape[0] * self.dist.world
                micro += 1
                self.batch_in_epoch += 1
                if micro % cfg.grad_accum:
                    continue
                if cfg.grad_clip > 0:
                    scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.task.parameters(), cfg.grad_clip)
                scaler.step(self.optimizer)
                scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.step += 1
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    row = self._log_row(sums, count, images, t0, alpha)
                    if bar is not None:
                        bar.set_postfix(loss=f"{row['loss']:.4f}")
                    sums, count, images, t0 = {}, 0, 0, time.perf_counter()
                if cfg.ckpt_every > 0 and self.step % cfg.ckpt_every == 0:
                    self.save()
                if self.step >= end:
                    break
            else:
                if read and not used:  # every sample of this epoch was dropped
                    self._no_step(f"every sample of epoch {self.epoch} was skipped")
                self.epoch += 1
                self.batch_in_epoch = 0
                continue
            break
        if bar is not None:
            bar.close()
        if self.step == start_step and start_step < end:
            self._no_step("the data gave no usable batch")
        self.save()
        return self.history

    def _no_step(self, why: str) -> None:
        """A run that cannot take an optimizer step is an error, saving nothing: a checkpoint of
        step 0 would let a fixed re-run "resume" past data it never saw."""
        counts = self.skips.as_dict()
        reasons = ", ".join(f"{v} {k.removeprefix('skipped_')}" for k, v in counts.items() if k.startswith("skipped_"))
        raise RunError(f"no optimizer step at step {self.step}: {why} ({counts['samples_seen']} samples read, "
                       f"{counts['samples_skipped']} skipped{': ' + reasons if reasons else ''}); check data="
                       f"{self.cfg.data!r} and image_root={self.cfg.image_root!r}")

    def _log_row(self, sums, count, images, t0, alpha) -> dict:
        # Host sync (log steps only): one stacked copy of the running sums.
        keys = sorted(sums)
        values = torch.stack([sums[k] for k in keys]).cpu().tolist() if keys else []
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t0
        row = {"step": self.step, "epoch": self.epoch, "lr": self.scheduler.get_last_lr()[0], "alpha": alpha}
        row.update({k: v / max(1, count) for k, v in zip(keys, values)})
        row["images_per_s"] = images / dt if dt > 0 else float("nan")
        row.update(self.skips.as_dict())  # samples_seen, samples_skipped, skipped_<reason>
        if self.flops_per_image and self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
            peak = next((v for k, v in _PEAK_BF16.items() if k in name), None)
            if peak:
                row["mfu"] = row["images_per_s"] * self.flops_per_image / (peak * self.dist.world)
        self.history.append(row)
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        if not all(math.isfinite(row[k]) for k in keys):
            raise FloatingPointError(f"non-finite loss at step {self.step}: {row}")
        return row
