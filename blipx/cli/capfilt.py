"""``blipx capfilt``: :class:`blipx.capfilt.CapFilt` over an annotation file, split across
torchrun ranks, then rank 0 merges the chunks and writes the report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from blipx.cli._common import non_negative_int, positive_int, probability


def add_parser(sub) -> None:
    p = sub.add_parser("capfilt", help="bootstrap an annotation file: caption (nucleus) + filter (ITM)")
    p.add_argument("--captioner", required=True, help="BLIP captioning model (blipx dir, HF dir, .pth)")
    p.add_argument("--filter", required=True, help="BLIP retrieval model whose ITM head filters")
    p.add_argument("--data", required=True, help="JSON/JSONL annotation file (JSONL streams)")
    p.add_argument("--image-root", default=None, help="default: the annotation file's folder")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="read image paths that are absolute or leave --image-root (refused by default)")
    p.add_argument("--out", required=True, help="output folder (re-run the same command to resume)")
    p.add_argument("--num-captions", type=positive_int, default=1)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--threshold", type=probability, default=0.5, help="keep captions with P(match) >= this")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--chunk-size", type=positive_int, default=256)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--prompt", default="a picture of ")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from blipx.capfilt import CapFilt, CapFiltSettings, merge_and_report
    from blipx.models import BlipCaptioner, BlipRetriever
    from blipx.train.distributed import distributed_session

    with distributed_session(args.device) as dist_info:
        settings = CapFiltSettings(num_captions=args.num_captions, top_p=args.top_p, threshold=args.threshold,
                                   batch_size=args.batch_size, chunk_size=args.chunk_size, seed=args.seed,
                                   prompt=args.prompt, allow_outside_root=args.allow_outside_root)
        captioner = BlipCaptioner.from_pretrained(args.captioner).to(dist_info.device)
        filt = BlipRetriever.from_pretrained(args.filter).to(dist_info.device)
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
    return 0
