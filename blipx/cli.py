"""The ``blipx`` command line (also ``python -m blipx``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


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


def _cmd_capfilt(args: argparse.Namespace) -> int:
    from blipx.capfilt import CapFilt, CapFiltSettings, merge_and_report
    from blipx.models import BlipCaptioner, BlipRetriever
    from blipx.models.downstream import load_model_as
    from blipx.train.distributed import cleanup, init_distributed

    dist_info = init_distributed(args.device)
    try:
        settings = CapFiltSettings(num_captions=args.num_captions, top_p=args.top_p, threshold=args.threshold,
                                   batch_size=args.batch_size, chunk_size=args.chunk_size, seed=args.seed,
                                   prompt=args.prompt)
        captioner = load_model_as(BlipCaptioner, args.captioner).to(dist_info.device)
        filt = load_model_as(BlipRetriever, args.filter).to(dist_info.device)
        image_root = args.image_root or str(Path(args.data).parent)
        n = CapFilt(captioner, filt, settings).run(args.data, image_root, args.out, dist_info.rank, dist_info.world,
                                                   progress=not args.no_progress)
        print(f"rank {dist_info.rank}: {n} new chunk(s)")
        if dist_info.world > 1:
            import torch.distributed as dist

            dist.barrier()  # every chunk is on disk before rank 0 merges
        if dist_info.is_main:
            report = merge_and_report(args.out, settings.threshold)
            print(json.dumps(report, indent=1))
            print(f"bootstrapped annotations: {Path(args.out) / 'bootstrapped.jsonl'}")
    finally:
        cleanup()
    return 0


def _cmd_caption(args: argparse.Namespace) -> int:
    from blipx.caption_cli import run_caption

    rows = run_caption(args.images, args.model, beams=args.beams, top_p=args.top_p, batch_size=args.batch_size,
                       out=args.out, prompt=args.prompt, device=args.device, progress=not args.no_progress)
    if not args.out:
        for r in rows:
            print(json.dumps(r))
    skipped = sum("error" in r for r in rows)
    print(f"{len(rows) - skipped} captioned, {skipped} unreadable" + (f"; written to {args.out}" if args.out else ""),
          file=sys.stderr)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from blipx.demo import main as demo_main

    return demo_main(args.demo_args)


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

    p = sub.add_parser("caption", help="caption image files or folders (JSONL out)")
    p.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--model", required=True, help="BLIP captioner: blipx folder, HF folder or official .pth")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--beams", type=int, default=3, help="beam search width (default 3)")
    mode.add_argument("--top-p", type=float, default=None, help="nucleus sampling instead of beam search")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--prompt", default=None, help="e.g. 'a picture of ' for COCO-fine-tuned captioners")
    p.add_argument("--out", default=None, help="JSONL output (default: stdout)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_caption)

    p = sub.add_parser("demo", help="pretrain a small BLIP on synthetic shapes, evaluate, caption", add_help=False)
    p.add_argument("demo_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("capfilt", help="bootstrap an annotation file: caption (nucleus) + filter (ITM)")
    p.add_argument("--captioner", required=True, help="BLIP captioning model (blipx dir, HF dir, .pth)")
    p.add_argument("--filter", required=True, help="BLIP retrieval model whose ITM head filters")
    p.add_argument("--data", required=True, help="JSON/JSONL annotation file (JSONL streams)")
    p.add_argument("--image-root", default=None, help="default: the annotation file's folder")
    p.add_argument("--out", required=True, help="output folder (re-run the same command to resume)")
    p.add_argument("--num-captions", type=int, default=1)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", default="a picture of ")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_capfilt)
    return parser


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:  # the demo owns its options (argparse's REMAINDER drops leading ones)
        from blipx.demo import main as demo_main

        return demo_main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
