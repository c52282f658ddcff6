"""``blipx export hf|onnx --model M --out DIR``: write a trained model for transformers or ONNX runtimes.

- ``hf``: ``save_pretrained(out, format="hf")`` of the model (``--task`` picks the head of a
  pretraining folder: captioner, retriever or vqa);
- ``onnx``: :func:`blipx.export.onnx.export_onnx` of the model loaded as its family's
  retriever (image encoder + ITC, text encoder + ITC, ITM), on the CPU in fp32.

Exit codes: 0 written; 1 a missing path or unreadable checkpoint; 2 a model or setting that
cannot be exported (the message says why), or an ``--out`` that already holds an export.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from blipx.cli._common import _int_at_least
from blipx.export import DEFAULT_OPSET, MIN_OPSET

TASKS = ("captioner", "retriever", "vqa")


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a model to Hugging Face transformers or ONNX")
    targets = p.add_subparsers(dest="target", required=True)
    hf = targets.add_parser("hf", help="a folder transformers' BlipFor* classes load (config, weights, processor)")
    hf.add_argument("--task", choices=TASKS, default=None,
                    help="head to export from a pretraining folder (default: the folder's own architecture)")
    onnx = targets.add_parser("onnx", help="image_encoder.onnx, text_encoder.onnx, itm.onnx (+ export.json)")
    onnx.add_argument("--opset", type=_int_at_least(MIN_OPSET), default=DEFAULT_OPSET,
                      help=f"ONNX opset (default {DEFAULT_OPSET}; torch's exporter emits >= {MIN_OPSET})")
    onnx.add_argument("--no-image-embeds", action="store_true",
                      help="image graph outputs image_feat only (and no itm.onnx, which reads image_embeds)")
    for t in (hf, onnx):
        t.add_argument("--model", required=True, help="blipx folder, HF BLIP folder or official .pth")
        t.add_argument("--out", required=True, help="output folder (created)")
        t.add_argument("--overwrite", action="store_true", help="replace an export already in --out")
        t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from blipx.models import from_pretrained

    out = Path(args.out)
    marker = "config.json" if args.target == "hf" else "export.json"
    if Path(args.model).exists() and out.exists() and out.resolve() == Path(args.model).resolve():
        print(f"blipx export: --out {out} is the --model folder; write the export elsewhere", file=sys.stderr)
        return 2
    if (out / marker).exists() and not args.overwrite:
        print(f"blipx export: {out} already holds an export ({marker}); pass --overwrite to replace it",
              file=sys.stderr)
        return 2
    try:
        if args.target == "hf":
            model = from_pretrained(args.model, task=args.task)
            model.save_pretrained(out, format="hf")
            written = sorted(p.name for p in out.iterdir() if p.is_file())
            print(f"wrote {type(model).__name__} as HF {_hf_arch(out)} to {out}: {', '.join(written)}")
            return 0
        from blipx.export.onnx import export_onnx

        model = from_pretrained(args.model, task="retriever").float()
        manifest = export_onnx(model, out, opset=args.opset, image_embeds=not args.no_image_embeds)
    except (ValueError, ImportError) as e:
        print(f"blipx export {args.target}: {e}", file=sys.stderr)
        return 2
    axes = ", ".join(f"{k} {v}" for k, v in manifest["dynamic_axes"].items())
    print(f"wrote {', '.join(manifest['files'])} (opset {manifest['opset']}; dynamic axes: {axes}; "
          f"image size {manifest['image_size']}) to {out}")
    for note in manifest["notes"]:
        print(f"note: {note}")
    return 0


def _hf_arch(out: Path) -> str:
    import json

    return json.loads((out / "config.json").read_text())["architectures"][0]
