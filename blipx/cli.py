"""The ``blipx`` command line (also ``python -m blipx``)."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    from blipx.info import info_lines

    print("\n".join(info_lines()))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from blipx.bench_runner import run_benchmarks

    return run_benchmarks(args.names, quick=args.quick, out=args.out, bench_dir=args.dir)


def _cmd_train(args: argparse.Namespace) -> int:
    from blipx.train.config import load_config
    from blipx.train.run import run_training

    cfg = load_config(args.config, args.overrides, defaults={"task": args.default_task})
    pretrain = cfg.task.endswith("_pretrain")
    if args.command == "pretrain" and not pretrain or args.command == "finetune" and pretrain:
        kind = "a *_pretrain" if args.command == "pretrain" else "a fine-tuning (caption/retrieval)"
        print(f"blipx {args.command}: task={cfg.task} is not {kind} task", file=sys.stderr)
        return 2
    history = run_training(cfg, progress=not args.no_progress)
    if history:
        last = history[-1]
        print("final: " + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k.startswith("loss")))
    print(f"outputs in {cfg.out_dir}: metrics.jsonl, loss_curves.png, checkpoint-*/, model/")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from blipx import eval_runs

    common = dict(data=args.data, split=args.split, num_samples=args.num_samples, device=args.device,
                  image_root=args.image_root)
    if args.what == "retrieval":
        metrics = eval_runs.eval_retrieval(args.model, k_test=args.k_test, **common)
    else:
        metrics = eval_runs.eval_captioning(args.model, prompt=args.prompt, **common)
    print(json.dumps(metrics, indent=1))
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps({"what": args.what, "model": args.model, **metrics}) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blipx", description="Fast, faithful ALBEF and BLIP.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="versions, compiled CUDA archs, and which ops have CPU/CUDA kernels")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("bench", help="run the microbenchmarks and print a table")
    p.add_argument("names", nargs="*", help="benchmarks to run (e.g. ema); default: all")
    p.add_argument("--quick", action="store_true", help="smaller shapes and fewer repeats (smoke run)")
    p.add_argument("--out", default=None, help="JSONL file to append result rows to (default: none)")
    p.add_argument("--dir", default=None, help="directory holding bench_*.py (default: found automatically)")
    p.set_defaults(func=_cmd_bench)

    for name, default_task, text in (
        ("pretrain", "blip_pretrain", "pretrain ALBEF/BLIP (task=blip_pretrain|albef_pretrain)"),
        ("finetune", "blip_caption", "fine-tune (task=blip_caption|blip_retrieval|albef_retrieval)"),
    ):
        p = sub.add_parser(name, help=text, description=text + ". Settings: blipx.train.config.TrainConfig; "
                           "a YAML/JSON --config file, then key=value overrides (e.g. max_steps=100 amp=bf16).")
        p.add_argument("--config", default=None, help="YAML or JSON file of TrainConfig fields")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument("overrides", nargs="*", help="key=value settings (JSON values), applied after --config")
        p.set_defaults(func=_cmd_train, default_task=default_task)

    p = sub.add_parser("eval", help="evaluate retrieval (R@K) or captioning (BLEU-4, CIDEr) of a saved model")
    p.add_argument("what", choices=["retrieval", "caption"])
    p.add_argument("--model", required=True, help="a saved model folder (e.g. <out_dir>/model), HF dir or .pth")
    p.add_argument("--data", default="shapes", help="'shapes' or a JSON/JSONL annotation file")
    p.add_argument("--image-root", default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--num-samples", type=int, default=None)
    p.add_argument("--k-test", type=int, default=16, help="ITM re-ranks the ITC top-k (official 256 COCO / 128 Flickr)")
    p.add_argument("--prompt", default="a picture of ")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--out", default=None, help="append the metrics as a JSON line here")
    p.set_defaults(func=_cmd_eval)
    return parser


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
