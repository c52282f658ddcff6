"""``blipx caption INPUTS...``: caption images with a BLIP captioner (:meth:`blipx.api.Pipeline.caption`),
one JSONL row per image with its caption(s) and score(s)."""

from __future__ import annotations

import argparse

from blipx.cli import _infer
from blipx.cli._common import non_negative_int, positive_int, probability


def add_parser(sub) -> None:
    p = _infer.add_parser(sub, "caption", "caption images (JSONL out, with scores)",
                          """Caption images with a BLIP captioner (blipx.load(...).caption), one JSONL row per image.

Rows: {"image", "caption", "score"}, or with --num-captions N > 1 {"image", "captions", "scores"}.
Scores: beam search's length-normalised log-likelihood (HF sequences_scores); for --sample the
same quantity of each sampled caption under the model.""")
    p.add_argument("images", nargs="+", help=_infer.INPUTS_HELP)
    _infer.add_common(p, "BLIP captioner or pretraining model: blipx folder, HF folder or official .pth")
    p.add_argument("--num-captions", type=positive_int, default=1, help="captions per image (default 1)")
    p.add_argument("--beams", type=positive_int, default=None,
                   help="beam search width (default 3, or --num-captions if larger)")
    p.add_argument("--sample", action="store_true", help="nucleus sampling instead of beam search")
    p.add_argument("--top-p", type=probability, default=None, help="nucleus mass (default 0.9; implies --sample)")
    p.add_argument("--top-k", type=non_negative_int, default=0, help="top-k with --sample (default 0: off)")
    p.add_argument("--seed", type=non_negative_int, default=None, help="seed of --sample")
    p.add_argument("--max-length", type=positive_int, default=30)
    p.add_argument("--min-length", type=non_negative_int, default=5)
    p.add_argument("--prompt", default=None, help="e.g. 'a picture of ' for COCO-fine-tuned captioners")
    p.add_argument("--out", default=None, help="JSONL output (default: stdout)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    sample = args.sample or args.top_p is not None
    if sample and args.beams is not None:
        args._parser.error("--beams and --sample/--top-p exclude each other")
    n = args.num_captions
    if args.beams is not None and args.beams < n:
        args._parser.error(f"--beams {args.beams} cannot return --num-captions {n} captions (beams >= captions)")
    # Official decoding settings (BLIP's generate): beam search 3 beams, or nucleus sampling.
    kw = dict(max_length=args.max_length, min_length=args.min_length, prompt=args.prompt)
    if sample:
        kw.update(do_sample=True, top_p=0.9 if args.top_p is None else args.top_p, top_k=args.top_k)
        if args.seed is not None:
            kw["generator"] = torch.Generator().manual_seed(args.seed)
    elif args.beams is not None:
        kw["num_beams"] = args.beams
    pipe = _infer.open_pipeline(args, "captioner")
    if pipe is None:
        return 1
    if "generator" in kw and pipe.device.type != "cpu":
        kw["generator"] = torch.Generator(pipe.device).manual_seed(args.seed)
    records = _infer.read_inputs(args.images, args.image_root)

    def fn(images, _records):
        caps, scores = pipe.caption(images, num_captions=n, return_scores=True, progress=False, **kw)
        scores = scores.tolist()
        if n == 1:
            return [{"caption": c, "score": s} for c, s in zip(caps, scores)]
        return [{"captions": c, "scores": s} for c, s in zip(caps, scores)]

    with _infer.Sink(args.out) as sink:
        return _infer.run_records(args, records, fn, sink, "captioned")
