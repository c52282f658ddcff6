"""``blipx eval nlvr2`` (also ``python -m blipx.cli.nlvr``): :func:`blipx.evaluation.nlvr.eval_nlvr` on
a saved model -- true/false accuracy on the held-out shapes-NLVR2 statements or an official
NLVR2 JSON file (dev / test-P)."""

from __future__ import annotations

import argparse
import json

from blipx.cli._common import add_eval_arguments, resolve_device, run_reporting


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_eval_arguments(p, model="a saved NLVR (or pretraining) model folder, or an official .pth",
                       data="shapes_nlvr", data_help="'shapes_nlvr' or an official NLVR2 JSON file",
                       image_root_help="folder the file's image paths are relative to", shapes="shapes_nlvr",
                       batch_size=32)


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
    return run_reporting(p.prog, run, p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
