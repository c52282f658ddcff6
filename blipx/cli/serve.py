"""``blipx serve --model M``: the local web app of :mod:`blipx.serve` (try a model, review CapFilt)."""

from __future__ import annotations

import argparse
import sys

from blipx.cli._common import positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="local web page: try a model, review a CapFilt folder")
    p.add_argument("--model", required=True, help="model to try: blipx folder, HF folder or official .pth")
    p.add_argument("--images", default=None, help="folder of images the try page offers to pick from")
    p.add_argument("--capfilt", default=None, help="a `blipx capfilt` output folder to review")
    p.add_argument("--capfilt-images", default=None,
                   help="the folder the CapFilt rows' image paths are relative to (the run's --image-root; "
                        "default: the folder of the input file recorded in its settings.json)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; the app has no login)")
    p.add_argument("--port", type=positive_int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest uploaded image file (default 10)")
    p.add_argument("--device", default=None, help="default: CUDA when available")
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    import blipx
    from blipx.serve import create_app

    if args.max_upload_mb <= 0:
        print("blipx serve: --max-upload-mb must be > 0", file=sys.stderr)
        return 2
    try:
        pipeline = blipx.load(args.model, device=args.device, dtype=args.dtype)
        app = create_app(pipeline, model_name=args.model, images=args.images, capfilt=args.capfilt,
                         capfilt_images=args.capfilt_images, max_upload_bytes=int(args.max_upload_mb * 2**20))
    except (OSError, ValueError) as e:  # a folder that is not there or not a CapFilt run, a bad device
        print(f"blipx serve: {e}", file=sys.stderr)
        return 1
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"blipx serve: listening on {args.host}, reachable from other machines; the app has no login",
              file=sys.stderr)
    print(f"blipx serve: http://{args.host}:{args.port}/try" + (" and /review" if args.capfilt else ""),
          file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
