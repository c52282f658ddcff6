"""``blipx match INPUTS... --text T``: ITM match probabilities and ITC similarities of images and
texts (:meth:`blipx.api.Pipeline.match`), one JSONL row per image."""

from __future__ import annotations

import argparse

from blipx.cli import _infer


def add_parser(sub) -> None:
    p = _infer.add_parser(sub, "match", "image-text match scores: ITM probability and ITC similarity",
                          """ITM match probability and ITC similarity of images and texts (blipx.load(...).match).

Texts: one --text (or a --texts file of one line) pairs every image with it; several texts score
every image against each (the grid); without either, each JSONL record's "text" field is its
image's text. Rows: {"image", "text", "itm", "itc"}, or for the grid {"image", "texts", "itm": [...],
"itc": [...]} in --text order. itm = P(match) of the ITM head; itc = cosine similarity of the
normalised ITC features.""")
    p.add_argument("images", nargs="+", help=_infer.INPUTS_HELP)
    _infer.add_common(p, "retrieval or pretraining model (ITC + ITM): blipx folder, HF folder or official .pth")
    p.add_argument("--text", action="append", default=None, help="a text to match (repeatable)")
    p.add_argument("--texts", default=None, help="file of texts, one per line")
    p.add_argument("--out", default=None, help="JSONL output (default: stdout)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    listed = _infer.read_list_option(args, "--texts", args.texts, "texts")
    if isinstance(listed, int):
        return listed
    texts = list(args.text or []) + listed
    pipe = _infer.open_pipeline(args, "retriever")
    if pipe is None:
        return 1
    records = _infer.read_inputs(args.images, args.image_root)
    if len(texts) == 1:
        for r in records:
            r["text"] = texts[0]
    elif not texts:
        for r in records:
            if "error" not in r and not isinstance(r.get("text"), str):
                r["_error"] = "no_text"  # neither --text nor a "text" field

    def fn(images, recs):
        if len(texts) > 1:
            out = pipe.match(images, texts, grid=True, progress=False)
            return [{"texts": texts, "itm": i, "itc": c} for i, c in zip(out["itm"].tolist(), out["itc"].tolist())]
        out = pipe.match(images, [r["text"] for r in recs], progress=False)
        return [{"itm": i, "itc": c} for i, c in zip(out["itm"].tolist(), out["itc"].tolist())]

    with _infer.Sink(args.out) as sink:
        return _infer.run_records(args, records, fn, sink, "matched")
