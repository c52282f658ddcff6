"""``blipx eval nlvr2`` (also ``python -m blipx.cli.nlvr``): :func:`blipx.evaluation.nlvr.eval_nlvr` on
a saved model -- true/false accuracy on the held-out shapes-NLVR2 statements or an official
NLVR2 JSON file (dev / test-P)."""

from __future__ import annotations

import argparse
import json
import sys

from blipx.cli._common import positive_int, resolve_device


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a saved NLVR (or pretraining) model folder, or an official .pth")
    p.add_argument("--data", default="shapes_nlvr", help="'shapes_nlvr' or an official NLVR2 JSON file")
    p.add_argument("--image-root", default=None, help="folder the file's image paths are relative to")
    p.add_argument("--num-samples", type=positive_int, default=None)
    p.add_argument("--max-objects", type=positive_int, default=None, help="shapes_nlvr only: shapes per scene")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> int:
    from blipx.evaluation.nlvr import eval_nlvr

    metrics, _ = eval_nlvr(args.model, args.data, image_root=args.image_root, num_samples=args.num_samples,
                           max_objects=args.max_objects, batch_size=args.batch_size,
                           device=resolve_device(args.device))
    print(json.dumps(metrics, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="blipx eval nlvr2", description=__doc__.split("\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    from blipx.weights.io import CheckpointError

    try:
        return run(args)
    except (FileNotFoundError, CheckpointError) as e:  # a bad path or file: its message, not a traceback
        print(f"blipx eval nlvr2: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
