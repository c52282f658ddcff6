"""``blipx eval vqa`` (also ``python -m blipx.cli.vqa``): :func:`blipx.evaluation.vqa.eval_vqa` on
a saved model -- VQA accuracy by ranking an answer list (``--rank``, the default; k_test 128)
or by generation (``--generate``: beam 3, max 10, min 1), and the server's results JSON."""

from __future__ import annotations

import argparse
import json

from blipx.cli._common import add_eval_arguments, positive_int, resolve_device, run_reporting


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_eval_arguments(p, model="a saved VQA (or pretraining) model folder, HF dir or .pth", data="shapes_vqa",
                       data_help="'shapes_vqa' or an official test-format JSON file", image_root_help=None,
                       shapes="shapes_vqa", batch_size=32)
    p.add_argument("--answer-list", default=None, help="official answer_list.json (ranking; shapes_vqa has its own)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--rank", dest="mode", action="store_const", const="rank", help="rank the answer list (default)")
    mode.add_argument("--generate", dest="mode", action="store_const", const="generate", help="beam-search answers")
    p.set_defaults(mode="rank")
    p.add_argument("--k-test", type=positive_int, default=128, help="first-token top-k re-ranked (official 128)")
    p.add_argument("--results", default=None, help="write [{question_id, answer}] here (server format)")


def run(args: argparse.Namespace) -> int:
    from blipx.evaluation.vqa import eval_vqa

    metrics, _ = eval_vqa(args.model, args.data, mode=args.mode, answer_list=args.answer_list,
                          num_samples=args.num_samples, max_objects=args.max_objects, image_root=args.image_root,
                          k_test=args.k_test, batch_size=args.batch_size, device=resolve_device(args.device),
                          results=args.results)
    print(json.dumps(metrics, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="blipx eval vqa", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run_reporting(p.prog, run, p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
