"""``blipx eval ve`` (also ``python -m blipx.cli.ve``): :func:`blipx.evaluation.ve.eval_ve` on a saved
model -- 3-way visual-entailment accuracy (salesforce/ALBEF ``VE.py`` ``evaluate``), per class too,
on the held-out shapes-VE statements or official SNLI-VE JSON files."""

from __future__ import annotations

import argparse
import json

from blipx.cli._common import positive_int, resolve_device


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a saved VE (or pretraining) model folder, or an official .pth")
    p.add_argument("--data", default="shapes_ve",
                   help="'shapes_ve' or official SNLI-VE JSON file(s), comma-separated (ve_test.json)")
    p.add_argument("--image-root", default=None, help="where <image>.jpg lives (default: the JSON's folder)")
    p.add_argument("--num-samples", type=positive_int, default=None)
    p.add_argument("--max-objects", type=positive_int, default=None, help="shapes_ve only: shapes per scene")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> int:
    from blipx.evaluation.ve import eval_ve

    metrics, _ = eval_ve(args.model, args.data, num_samples=args.num_samples, image_root=args.image_root,
                         batch_size=args.batch_size, device=resolve_device(args.device), max_objects=args.max_objects)
    print(json.dumps(metrics, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="blipx eval ve", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
