"""``blipx eval grounding`` (also ``python -m blipx.cli.grounding``):
:func:`blipx.evaluation.grounding.eval_grounding` on a saved retrieval (or pretraining) model --
Grad-CAM of the ITM score (salesforce/ALBEF ``Grounding.py``), scored on held-out shapes scenes
(a hit = the map's peak in the referred shape's cell) or on RefCOCO+ (best detection box, IoU >= 0.5)."""

from __future__ import annotations

import argparse
import json

from blipx.cli._common import add_eval_arguments, non_negative_int, resolve_device, run_reporting


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_eval_arguments(p, model="a saved retrieval / pretraining model folder, or an official .pth",
                       data="shapes_grounding", data_help="'shapes_grounding' or RefCOCO+ test-format file(s), "
                       "comma-separated (refcoco+_val.json,refcoco+_test.json)",
                       image_root_help="RefCOCO+: the COCO image folder", shapes="shapes_grounding", batch_size=32)
    p.add_argument("--refcoco-data", default=None, help="RefCOCO+: the REFER data folder (holds refcoco+/)")
    p.add_argument("--det-file", default=None, help="RefCOCO+: dets.json (candidate boxes per image)")
    p.add_argument("--dataset", default="refcoco+")
    p.add_argument("--split-by", default="unc")
    p.add_argument("--layer", type=non_negative_int, default=None,
                   help="text-encoder layer whose cross-attention is read (ALBEF 8, BLIP 7, clipped to the depth)")


def run(args: argparse.Namespace) -> int:
    from blipx.evaluation.grounding import eval_grounding

    metrics = eval_grounding(args.model, args.data, refcoco_data=args.refcoco_data, det_file=args.det_file,
                             image_root=args.image_root, dataset=args.dataset, split_by=args.split_by,
                             layer=args.layer, num_samples=args.num_samples, max_objects=args.max_objects,
                             batch_size=args.batch_size, device=resolve_device(args.device))
    print(json.dumps(metrics, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="blipx eval grounding", description=__doc__.split("\n")[1])
    add_arguments(p)
    args = p.parse_args(argv)
    if args.data != "shapes_grounding" and not (args.refcoco_data and args.det_file):
        p.error("RefCOCO+ evaluation needs --refcoco-data and --det-file")
    return run_reporting(p.prog, run, args)


if __name__ == "__main__":
    raise SystemExit(main())
