"""``blipx pretrain`` / ``blipx finetune``: a TrainConfig from --config and key=value overrides,
then :func:`blipx.train.run.run_training`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from blipx.train.config import TASKS

_PRETRAIN = "|".join(t for t in TASKS if t.endswith("_pretrain"))
_FINETUNE = "|".join(t for t in TASKS if not t.endswith("_pretrain"))
# command -> (default task, help, the setting a run cannot go without, an example)
COMMANDS = {
    "pretrain": ("blip_pretrain", f"pretrain ALBEF/BLIP (task={_PRETRAIN})", "data",
                 "blipx pretrain model=blip_mini data=shapes max_steps=500            # -> runs/blip_pretrain/"),
    "finetune": ("blip_caption", f"fine-tune (task={_FINETUNE})", "init",
                 "blipx finetune task=blip_retrieval init=runs/blip_pretrain/model    # -> runs/blip_retrieval/"),
}


def add_parser(sub) -> None:
    for name, (default_task, text, _, example) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text + ". Settings: blipx.train.config.TrainConfig; "
                           "a YAML/JSON --config file, then key=value overrides (e.g. max_steps=100 amp=bf16). "
                           "Outputs go to out_dir (default runs/<task>).", epilog="example: " + example)
        p.add_argument("--config", default=None, help="YAML or JSON file of TrainConfig fields")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument("overrides", nargs="*", help="key=value settings, parsed by each field's type, after --config")
        p.set_defaults(func=run, default_task=default_task, usage=p.format_usage)


def _given(args: argparse.Namespace) -> set[str]:
    """Settings named on the command line or in the --config file (whatever their value)."""
    keys = {o.split("=", 1)[0].strip() for o in args.overrides}
    if args.config:
        from blipx.train.config import read_config_file

        keys |= set(read_config_file(args.config))
    return keys


def run(args: argparse.Namespace) -> int:
    from blipx.train.checkpoint import list_checkpoints
    from blipx.train.config import ConfigError, RunError, load_config
    from blipx.train.run import run_training

    name = f"blipx {args.command}"
    _, _, needed, example = COMMANDS[args.command]
    try:
        cfg = load_config(args.config, args.overrides, defaults={"task": args.default_task})
        pretrain = cfg.task.endswith("_pretrain")
        if args.command == "pretrain" and not pretrain or args.command == "finetune" and pretrain:
            kind = "a *_pretrain" if args.command == "pretrain" else "a fine-tuning (caption/retrieval)"
            print(f"{name}: task={cfg.task} is not {kind} task", file=sys.stderr)
            return 2
        if needed not in _given(args):  # a bare command must not start a default run
            print(args.usage().rstrip() + f"\n{name}: give {needed}=... (see {name} --help)\nexample: {example}",
                  file=sys.stderr)
            return 2
        history = run_training(cfg, progress=not args.no_progress)
    except ConfigError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 2
    except RunError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 1
    if history:
        last = history[-1]
        print("final: " + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k.startswith("loss")))
    out = Path(cfg.out_dir)  # what is there, not what should be
    found = [n for n in ("metrics.jsonl", "loss_curves.png") if (out / n).is_file()]
    found += [p.name + "/" for p in list_checkpoints(out)] + (["model/"] if (out / "model").is_dir() else [])
    print(f"outputs in {out}: {', '.join(found)}")
    return 0
