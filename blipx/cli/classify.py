"""``blipx classify INPUTS... --labels dog,cat,bird``: zero-shot classification by ITC (optionally
re-ranked by ITM; :meth:`blipx.api.Pipeline.classify`), one JSONL row per image."""

from __future__ import annotations

import argparse

from blipx.cli import _infer
from blipx.cli._common import positive_int


def add_parser(sub) -> None:
    p = _infer.add_parser(sub, "classify", "zero-shot image classification over given labels",
                          """Zero-shot classification by ITC, optionally re-ranked by ITM (blipx.load(...).classify).

Each label becomes the prompt --template; probabilities are the softmax of the ITC similarities
over the temperature (with --rerank: of the ITM re-ranking scores of the --rerank-k best). Rows:
{"image", "labels": [the --top best], "probs": [their probabilities]}.""")
    p.add_argument("images", nargs="+", help=_infer.INPUTS_HELP)
    _infer.add_common(p, "retrieval or pretraining model (ITC + ITM): blipx folder, HF folder or official .pth")
    p.add_argument("--labels", default=None, help="comma-separated class names")
    p.add_argument("--labels-file", default=None, help="file of class names, one per line")
    p.add_argument("--template", default="a picture of a {}.", help="prompt of each label ('{}' = the label)")
    p.add_argument("--rerank", action="store_true", help="re-rank the --rerank-k best classes with the ITM head")
    p.add_argument("--rerank-k", type=positive_int, default=16)
    p.add_argument("--top", type=positive_int, default=5, help="labels per row (default 5)")
    p.add_argument("--out", default=None, help="JSONL output (default: stdout)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if (args.labels is None) == (args.labels_file is None):
        args._parser.error("give exactly one of --labels and --labels-file")
    if "{}" not in args.template:
        args._parser.error(f"--template must contain '{{}}' for the label, got {args.template!r}")
    if args.labels is not None:
        labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    else:
        try:
            labels = _infer.read_lines(args.labels_file)
        except (OSError, ValueError) as e:
            return _infer.fail(args, f"--labels-file: {e}")
    if not labels:
        return _infer.fail(args, "no labels given")
    pipe = _infer.open_pipeline(args, "retriever")
    if pipe is None:
        return 1
    records = _infer.read_inputs(args.images, args.image_root)
    top = min(args.top, len(labels))

    def fn(images, _recs):
        probs = pipe.classify(images, labels, args.template, rerank=args.rerank, rerank_k=args.rerank_k,
                              progress=False)
        p, idx = probs.topk(top, dim=1)
        return [{"labels": [labels[j] for j in row], "probs": pr} for row, pr in zip(idx.tolist(), p.tolist())]

    with _infer.Sink(args.out) as sink:
        return _infer.run_records(args, records, fn, sink, "classified")
