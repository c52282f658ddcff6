"""``blipx answer INPUTS... --question Q``: answer questions about images with a VQA model
(:meth:`blipx.api.Pipeline.answer`), one JSONL row per image."""

from __future__ import annotations

import argparse

from blipx.cli import _infer
from blipx.cli._common import non_negative_int, positive_int


def add_parser(sub) -> None:
    p = _infer.add_parser(sub, "answer", "answer questions about images (JSONL out, with scores)",
                          """Answer questions about images with a VQA model (blipx.load(...).answer), one row per image.

The question is --question for every image, or each JSONL record's "question" field. Rows:
{"image", "question", "answer", "score"}. Without --answers the answer is generated (beam
search; score: its length-normalised log-likelihood); with --answers it is the best of that list
by the official two-stage ranking (score: its sequence log-likelihood).""")
    p.add_argument("images", nargs="+", help=_infer.INPUTS_HELP)
    _infer.add_common(p, "VQA model (or a pretraining model, through the official conversion)")
    p.add_argument("--question", default=None, help="the question asked of every image")
    p.add_argument("--answers", default=None,
                   help="candidate answers to rank: a JSON list (.json) or one answer per line")
    p.add_argument("--k-test", type=positive_int, default=128, help="first-token candidates re-ranked (official 128)")
    p.add_argument("--beams", type=positive_int, default=3, help="beam width of generated answers (default 3)")
    p.add_argument("--max-length", type=positive_int, default=10)
    p.add_argument("--min-length", type=non_negative_int, default=1)
    p.add_argument("--out", default=None, help="JSONL output (default: stdout)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    answers = _infer.read_list_option(args, "--answers", args.answers, "answers")
    if isinstance(answers, int):
        return answers
    answers = answers or None  # None: generate
    pipe = _infer.open_pipeline(args, "vqa")
    if pipe is None:
        return 1
    records = _infer.read_inputs(args.images, args.image_root)
    for r in records:
        if args.question is not None:
            r["question"] = args.question
        elif "error" not in r and not isinstance(r.get("question"), str):
            r["_error"] = "no_question"  # neither --question nor a "question" field
    kw = {} if answers is not None else dict(num_beams=args.beams, max_length=args.max_length,
                                             min_length=args.min_length)

    def fn(images, recs):
        out, scores = pipe.answer(images, [r["question"] for r in recs], answers, return_scores=True,
                                  k_test=args.k_test, progress=False, **kw)
        return [{"answer": a, "score": s} for a, s in zip(out, scores.tolist())]

    with _infer.Sink(args.out) as sink:
        return _infer.run_records(args, records, fn, sink, "answered")
