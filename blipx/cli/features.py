"""``blipx features INPUTS... --out feats.safetensors``: normalised ITC features of images and
texts, or fused image-text features (:meth:`blipx.api.Pipeline.features`), to a ``.safetensors``
or ``.npy`` file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from blipx.cli import _infer


def add_parser(sub) -> None:
    p = _infer.add_parser(sub, "features", "image / text / multimodal features to .safetensors or .npy",
                          """Image, text or multimodal features (blipx.load(...).features) to .safetensors or .npy.

--kind unimodal (default): "image" [N, D] and "text" [M, D], the normalised ITC features.
--kind multimodal: "multimodal" [N, H], the fused [CLS] state of each image with its text (one
--text for all, or each JSONL record's "text"). A .safetensors file holds every array plus the
metadata "images" / "texts" (JSON lists: row i of an array is entry i) and "kind"; a .npy file
holds one array. stdout: one JSONL row per image, {"image", "row"} or an error row.""")
    p.add_argument("images", nargs="*", help=_infer.INPUTS_HELP)
    _infer.add_common(p, "retrieval or pretraining model (ITC + ITM): blipx folder, HF folder or official .pth")
    p.add_argument("--text", action="append", default=None, help="a text to embed (repeatable)")
    p.add_argument("--texts", default=None, help="file of texts, one per line")
    p.add_argument("--kind", default="unimodal", choices=["unimodal", "multimodal"])
    p.add_argument("--out", required=True, help="output file: .safetensors or .npy")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    suffix = Path(args.out).suffix
    if suffix not in (".safetensors", ".npy"):
        args._parser.error(f"--out must end in .safetensors or .npy, got {args.out!r}")
    listed = _infer.read_list_option(args, "--texts", args.texts, "texts")
    if isinstance(listed, int):
        return listed
    texts = list(args.text or []) + listed
    multimodal = args.kind == "multimodal"
    if not args.images and not texts:
        args._parser.error("give images and/or texts (--text, --texts)")
    if multimodal and (not args.images or len(texts) > 1):
        args._parser.error("--kind multimodal pairs images with one --text each (or a JSONL \"text\" field)")
    if suffix == ".npy" and not multimodal and args.images and texts:
        args._parser.error("a .npy file holds one array: embed images and texts into separate files, "
                           "or use .safetensors")
    pipe = _infer.open_pipeline(args, "retriever")
    if pipe is None:
        return 1
    arrays: dict[str, torch.Tensor] = {}
    kept: list[str] = []
    if args.images:
        records = _infer.read_inputs(args.images, args.image_root)
        if multimodal:
            for r in records:
                if texts:
                    r["text"] = texts[0]
                elif "error" not in r and not isinstance(r.get("text"), str):
                    r["_error"] = "no_text"
        chunks: list[torch.Tensor] = []

        def fn(images, recs):
            if multimodal:
                f = pipe.features(images, [r["text"] for r in recs], kind="multimodal", progress=False)["multimodal"]
            else:
                f = pipe.features(images, progress=False)["image"]
            chunks.append(f)
            rows = [{"row": len(kept) + i} for i in range(len(recs))]
            kept.extend(r["image"] for r in recs)
            return rows

        code = _infer.run_records(args, records, fn, sys.stdout, "embedded")
        if code:
            return code
        arrays["multimodal" if multimodal else "image"] = torch.cat(chunks)
    if texts and not multimodal:
        arrays["text"] = pipe.features(texts=texts, progress=False)["text"]
    _write(Path(args.out), arrays, {"kind": args.kind, "images": json.dumps(kept),
                                    "texts": json.dumps(texts if not multimodal else [])})
    print(f"blipx features: {', '.join(f'{k} {list(v.shape)}' for k, v in arrays.items())} -> {args.out}",
          file=sys.stderr)
    return 0


def _write(path: Path, arrays, metadata: dict[str, str]) -> None:
    """Atomically (blipx.weights.io): every array into a .safetensors file, or the one array
    into a .npy file."""
    from blipx.weights.io import atomic_write, write_safetensors

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        write_safetensors(path, arrays, metadata=metadata)
        return
    import numpy as np

    (arr,) = arrays.values()

    def w(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name
            np.save(f, arr.numpy())

    atomic_write(path, w)
