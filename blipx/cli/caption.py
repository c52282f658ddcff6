"""``blipx caption IMAGES...``: caption image files or folders with a BLIP captioner, JSONL out."""

from __future__ import annotations

import argparse
import json
import sys

from blipx.cli._common import positive_int, resolve_device


def add_parser(sub) -> None:
    p = sub.add_parser("caption", help="caption image files or folders (JSONL out)")
    p.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--model", required=True, help="BLIP captioner: blipx folder, HF folder or official .pth")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--beams", type=int, default=3, help="beam search width (default 3)")
    mode.add_argument("--top-p", type=float, default=None, help="nucleus sampling instead of beam search")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--max-length", type=int, default=30)
    p.add_argument("--min-length", type=int, default=5)
    p.add_argument("--prompt", default=None, help="e.g. 'a picture of ' for COCO-fine-tuned captioners")
    p.add_argument("--out", default=None, help="JSONL output (default: stdout)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from blipx.inference import caption_files, collect_images
    from blipx.models import BlipCaptioner

    captioner = BlipCaptioner.from_pretrained(args.model).to(resolve_device(args.device))
    # Official decoding settings: beam search 3 beams, or nucleus sampling with top_p (BLIP's generate).
    kw = dict(max_length=args.max_length, min_length=args.min_length)
    kw.update(dict(do_sample=True, top_p=args.top_p, top_k=0) if args.top_p is not None else dict(num_beams=args.beams))
    paths = collect_images(args.images)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="img", desc="caption")
    sink = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    done = unreadable = 0
    try:
        for rows in caption_files(captioner, paths, args.batch_size, args.prompt, **kw):
            for r in rows:
                if "error" in r:
                    unreadable += 1
                    print(f"blipx caption: skipped {r['image']} ({r['error']})", file=sys.stderr)
                else:
                    done += 1
                sink.write(json.dumps(r) + "\n")
            sink.flush()
            if bar is not None:
                bar.update(len(rows))
    finally:
        if bar is not None:
            bar.close()
        if args.out:
            sink.close()
    print(f"{done} captioned, {unreadable} unreadable" + (f"; written to {args.out}" if args.out else ""),
          file=sys.stderr)
    return 0
