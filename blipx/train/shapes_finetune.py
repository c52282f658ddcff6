"""What every synthetic shapes fine-tune (``python -m blipx.train.shapes_<task>``) shares: its
command-line options, the fine-tune itself (a family task converted from a pretraining folder
by the official loader rules, trained with :class:`blipx.train.trainer.Trainer`, saved to
``<out>/model``) and the ``<out>/summary.json`` it writes. Each task module keeps its recipe
(with the measurements behind it), its data and its scoring."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any


def parser(prog: str, doc: str, *, out: str, steps: int, recipe: dict[str, Any], max_objects: int,
           train_samples: int, eval_samples: int) -> argparse.ArgumentParser:
    """The options of a shapes fine-tune, with the task's defaults (``recipe`` gives lr and batch size)."""
    ap = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[1])
    ap.add_argument("--init", default="runs/demo/model", help="a pretrained shapes model folder")
    ap.add_argument("--out", default=out)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--batch-size", type=int, default=recipe["batch_size"])
    ap.add_argument("--lr", type=float, default=recipe["lr"])
    ap.add_argument("--max-objects", type=int, default=max_objects)
    ap.add_argument("--train-samples", type=int, default=train_samples)
    ap.add_argument("--eval-samples", type=int, default=eval_samples)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    return ap


def finetune(args: argparse.Namespace, task: str, data: str, recipe: dict[str, Any],
             data_options: dict[str, Any] | None = None, before: Callable[[Any], dict] | None = None,
             **config: Any):
    """Fine-tune ``--init`` as ``<family>_<task>`` on ``data`` (a shapes dataset name) with
    ``recipe`` (TrainConfig fields; ``batch_size`` and ``lr`` come from the options); returns
    ``(model, summary)`` where the summary holds the run's settings, training time and losses.
    ``before(model)``, when given, scores the converted model before any training step (its
    result is ``summary["before"]``, its time ``summary["eval_seconds"]``)."""
    import torch

    from blipx.models import read_checkpoint
    from blipx.tokenizer import tokenizer_for
    from blipx.train.config import TrainConfig
    from blipx.train.run import build_data, build_model, build_task
    from blipx.train.trainer import Trainer

    if not Path(args.init).exists():  # one line, not a traceback: the usual first mistake
        raise SystemExit(f"--init: no such model folder {args.init!r} (`blipx demo` writes runs/demo/model)")
    torch.manual_seed(args.seed)
    family = read_checkpoint(args.init).config.family
    settings = {k: v for k, v in recipe.items() if k != "batch_size"}
    options = {"num_samples": args.train_samples, "max_objects": args.max_objects, **(data_options or {})}
    cfg = TrainConfig(**{**settings, "lr": args.lr, **config}, task=f"{family}_{task}", init=args.init, data=data,
                      data_options=options, out_dir=args.out, device=args.device, max_steps=args.steps,
                      epochs=1000, batch_size=args.batch_size, log_every=max(1, args.steps // 10), seed=args.seed,
                      overwrite=args.overwrite)
    model = build_model(cfg)  # the family's model of this task, converted from the pretraining folder
    scored: dict[str, Any] = {}
    if before is not None:
        t0 = time.perf_counter()
        scored["before"] = before(model)
        scored["eval_seconds"] = round(time.perf_counter() - t0, 1)
    tok = tokenizer_for(family)
    dataset, collate = build_data(cfg, model, tok)
    t0 = time.perf_counter()
    history = Trainer(build_task(cfg, model, tok), cfg, dataset, collate).fit(progress=False)
    summary = {"init": args.init, "family": family, "steps": args.steps, "batch_size": args.batch_size,
               "lr": args.lr, "max_objects": args.max_objects, "train_samples": args.train_samples,
               "train_seconds": round(time.perf_counter() - t0, 1),
               "loss_first": history[0]["loss"] if history else None,
               "loss_last": history[-1]["loss"] if history else None, **scored}
    model.save_pretrained(Path(args.out) / "model")
    return model, summary


def write_summary(out: str, summary: dict[str, Any]) -> None:
    """``<out>/summary.json`` (atomically), and the same JSON on stdout."""
    from blipx.weights.io import write_json

    Path(out).mkdir(parents=True, exist_ok=True)
    write_json(Path(out) / "summary.json", summary)
    print(json.dumps(summary, indent=1))
