"""``blipx eval retrieval|caption``: :mod:`blipx.evaluation.runs` on a saved model."""

from __future__ import annotations

import argparse
import json

from blipx.cli._common import positive_int, resolve_device


def add_parser(sub) -> None:
    from blipx.cli import EVAL_TARGETS

    others = ", ".join(sorted(EVAL_TARGETS))
    p = sub.add_parser("eval", help="evaluate retrieval (R@K) or captioning (BLEU-4, CIDEr) of a saved model; "
                       f"also {others}: `blipx eval <target> --help`")
    p.add_argument("what", choices=["retrieval", "caption"])
    p.add_argument("--model", required=True, help="a saved model folder (e.g. <out_dir>/model), HF dir or .pth")
    p.add_argument("--data", default="shapes", help="'shapes' or a JSON/JSONL annotation file")
    p.add_argument("--image-root", default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--num-samples", type=positive_int, default=None)
    p.add_argument("--max-objects", type=positive_int, default=None, help="shapes data only: shapes per scene (default 3)")
    p.add_argument("--k-test", type=positive_int, default=16, help="ITM re-ranks the ITC top-k (official 256 COCO / 128 Flickr)")
    p.add_argument("--prompt", default="a picture of ")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="append the metrics as a JSON line here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from blipx.evaluation import runs

    common = dict(data=args.data, split=args.split, num_samples=args.num_samples, device=resolve_device(args.device),
                  image_root=args.image_root, max_objects=args.max_objects)
    if args.what == "retrieval":
        metrics = runs.eval_retrieval(args.model, k_test=args.k_test, **common)
    else:
        metrics = runs.eval_captioning(args.model, prompt=args.prompt, **common)
    print(json.dumps(metrics, indent=1))
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps({"what": args.what, "model": args.model, **metrics}) + "\n")
    return 0
