"""``blipx eval ve`` (also ``python -m blipx.cli.ve``): :func:`blipx.evaluation.ve.eval_ve` on a saved
model -- 3-way visual-entailment accuracy (salesforce/ALBEF ``VE.py`` ``evaluate``), per class too,
on the held-out shapes-VE statements or official SNLI-VE JSON files."""

from __future__ import annotations

import argparse
import json

from blipx.cli._common import add_eval_arguments, resolve_device, run_reporting


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_eval_arguments(p, model="a saved VE (or pretraining) model folder, or an official .pth", data="shapes_ve",
                       data_help="'shapes_ve' or official SNLI-VE JSON file(s), comma-separated (ve_test.json)",
                       image_root_help="where <image>.jpg lives (default: the JSON's folder)", shapes="shapes_ve",
                       batch_size=64)


def run(args: argparse.Namespace) -> int:
    from blipx.evaluation.ve import eval_ve

    metrics, _ = eval_ve(args.model, args.data, num_samples=args.num_samples, image_root=args.image_root,
                         batch_size=args.batch_size, device=resolve_device(args.device), max_objects=args.max_objects)
    print(json.dumps(metrics, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="blipx eval ve", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run_reporting(p.prog, run, p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
