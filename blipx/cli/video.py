"""``blipx eval video-retrieval`` (also ``python -m blipx.cli.video``): zero-shot video-text
retrieval by BLIP's protocol (:mod:`blipx.evaluation.video`) of a saved retrieval model on the
synthetic moving shapes or an annotation file of videos (files or folders of frames); prints
R@1/5/10 both ways, median and mean ranks, and the chance levels."""

from __future__ import annotations

import argparse
import json

from blipx.cli._common import non_negative_int, positive_int, resolve_device, run_reporting

# Settings a --config YAML may hold (configs/eval/blip_video_retrieval_msrvtt.yaml): the option names.
CONFIG_KEYS = ("model", "data", "video_root", "num_frames", "k_test", "image_size", "batch_size", "split",
               "num_samples", "device", "offload", "workers")  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="a YAML file of these settings (options given here override it)")
    p.add_argument("--model", default=None, help="a saved retrieval (or pretraining) model folder, HF dir or .pth")
    p.add_argument("--data", default="shapes_video", help="'shapes_video' or a JSON/JSONL annotation file "
                   "({\"video\": path, \"caption\": ...} or the official {\"clip_name\", \"caption\"})")
    p.add_argument("--video-root", default=None, help="folder the videos' paths are relative to (default: the file's)")
    p.add_argument("--num-frames", type=positive_int, default=8, help="frames sampled per video (official num_frm_test 8)")
    p.add_argument("--k-test", type=positive_int, default=128, help="ITM re-ranks the ITC top-k (official 128)")
    p.add_argument("--image-size", type=positive_int, default=None, help="frame resolution (default: the model's)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="videos per ViT batch")
    p.add_argument("--split", default="test", help="shapes_video only")
    p.add_argument("--num-samples", type=positive_int, default=None, help="videos to evaluate (shapes_video: 200)")
    p.add_argument("--workers", type=non_negative_int, default=4, help="data-loader workers (annotation files)")
    p.add_argument("--offload", action="store_true", help="keep the frame embeddings in host memory, as officially")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="append the result as a JSON line here")


def _config_defaults(p: argparse.ArgumentParser, path: str) -> dict:
    """The settings of a --config YAML file; anything wrong with it ends the command, naming it."""
    try:
        import yaml
    except ImportError:
        p.error("--config needs PyYAML (pip install pyyaml)")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        p.error(f"--config {path}: {e}")
    if not isinstance(cfg, dict):
        p.error(f"--config {path} must hold a mapping of settings")
    unknown = sorted(set(cfg) - set(CONFIG_KEYS))
    if unknown:
        p.error(f"--config {path}: unknown setting(s) {unknown}; known: {list(CONFIG_KEYS)}")
    return cfg


def run(args: argparse.Namespace) -> int:
    from blipx.evaluation.video import run_video_retrieval

    result = run_video_retrieval(
        args.model, args.data, video_root=args.video_root, num_frames=args.num_frames, k_test=args.k_test,
        device=resolve_device(args.device), split=args.split, num_samples=args.num_samples,
        batch_size=args.batch_size, image_size=args.image_size, offload=args.offload, num_workers=args.workers,
    )  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps({"what": "video-retrieval", "model": args.model, "data": args.data, **result}) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="blipx eval video-retrieval", description=(
        "Zero-shot video-text retrieval by BLIP's protocol (uniformly sampled frames, ITC on the frame-averaged "
        "features, ITM re-rank over the concatenated frames): R@1/5/10 both ways, median and mean rank, chance."))
    add_arguments(p)
    args = p.parse_args(argv)
    if args.config:  # the file's settings become defaults; the command line's still win
        cfg = _config_defaults(p, args.config)
        p.set_defaults(**cfg)
        args = p.parse_args(argv)
        for key in ("num_frames", "k_test", "batch_size", "image_size", "num_samples"):
            value = getattr(args, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                p.error(f"{args.config}: {key} must be an integer >= 1, got {value!r}")
    if not args.model:
        p.error("--model is required (or `model:` in --config)")
    return run_reporting(p.prog, run, args, also=(ImportError,))  # ImportError: no PyAV for video files


if __name__ == "__main__":
    raise SystemExit(main())
