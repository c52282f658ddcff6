"""What the inference commands (``blipx caption / answer / match / features / classify``) share:
their common options, reading the inputs (files, folders, globs, JSONL), loading the pipeline
(:func:`blipx.load`), and running it chunk by chunk with unreadable images reported as error
rows while the run goes on."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from blipx.cli._common import positive_int

EXIT_CODES = """\
exit codes:
  0  the run completed; an unreadable or missing image is an error row
     {"image": ..., "error": <reason>} and the run goes on
  1  bad input or model: a missing checkpoint or one that cannot serve this command,
     an unreadable text/label/answer file, or no input image could be read
  2  usage error (bad or conflicting options)"""

INPUTS_HELP = ("image files, folders (searched recursively), glob patterns ('photos/**/*.jpg') and/or "
               ".jsonl files of records with an \"image\" field (relative to --image-root, default the "
               "JSONL's folder; other fields are copied to the output)")


def add_parser(sub, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """A subcommand parser with the exit codes as its epilog, and its own ``_parser`` default
    (for usage errors found after parsing: ``args._parser.error(...)`` exits with 2)."""
    p = sub.add_parser(name, help=help, description=description, epilog=EXIT_CODES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(_parser=p)
    return p


def add_common(p: argparse.ArgumentParser, model_help: str, batch_size: int = 16) -> None:
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--image-root", default=None, help="folder that JSONL image paths are relative to")
    p.add_argument("--batch-size", type=positive_int, default=batch_size)
    p.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def fail(args: argparse.Namespace, message: str) -> int:
    """Exit code 1 with a one-line message (bad input or model)."""
    print(f"blipx {args.command}: {message}", file=sys.stderr)
    return 1


def open_pipeline(args: argparse.Namespace, task: str):
    """:func:`blipx.load` of ``--model`` with the model of ``task`` loaded now, so a missing or
    unusable checkpoint fails before any image is read. None (message printed) on failure."""
    import blipx
    from blipx.weights.io import CheckpointError

    try:
        return blipx.load(args.model, task=task, device=args.device, dtype=args.dtype, batch_size=args.batch_size)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        fail(args, str(e))
        return None


def read_lines(path: str) -> list[str]:
    """Non-empty stripped lines of a text file; a ``.json`` file is read as a JSON list of strings."""
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".json"):
        items = json.loads(text)
        if not isinstance(items, list) or not all(isinstance(a, str) for a in items):
            raise ValueError(f"{path}: expected a JSON list of strings")
        return items
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_list_option(args: argparse.Namespace, flag: str, path: str | None, what: str) -> list[str] | int:
    """The lines of the file given to ``flag`` ([] when it was not given), or, for an unreadable
    or empty file, the exit code of a one-line error (callers return an ``int`` at once)."""
    if path is None:
        return []
    try:
        lines = read_lines(path)
    except (OSError, ValueError) as e:
        return fail(args, f"{flag}: {e}")
    return lines if lines else fail(args, f"{flag}: {path} holds no {what}")


def read_inputs(inputs: Sequence[str], image_root: str | None = None) -> list[dict[str, Any]]:
    """One record per image: ``{"image": <as given>, ...}`` with the file to read under
    ``"_path"``; a JSONL line that is not a record with an ``"image"`` string is an error row
    (``"bad_record"``) named ``file:line``."""
    from blipx.inputs import collect_images

    records: list[dict[str, Any]] = []
    for item in inputs:
        if str(item).endswith(".jsonl") and Path(item).is_file():
            root = image_root if image_root is not None else str(Path(item).parent)
            with open(item, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        row = None
                    if not isinstance(row, dict) or not isinstance(row.get("image"), str):
                        records.append({"image": f"{item}:{n}", "error": "bad_record"})
                        continue
                    records.append({**row, "_path": os.path.join(root, row["image"])})
        else:
            records.extend({"image": str(p), "_path": str(p)} for p in collect_images([item]))
    return records


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith("_")}


def run_records(args: argparse.Namespace, records: list[dict[str, Any]],
                fn: Callable[[list[Any], list[dict[str, Any]]], list[dict[str, Any]]], sink, what: str) -> int:
    """Read the images of ``records`` chunk by chunk (``--batch-size``), call ``fn(images,
    records)`` on the readable ones (it returns one dict of result fields per image), and write
    one JSONL row per record to ``sink`` -- an error row for a record that could not be read.
    Returns the exit code: 0, or 1 when no image at all could be read."""
    from blipx.data import Skipped, load_image

    if not records:
        return fail(args, "no input images found")
    bar = None
    if not args.no_progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(records), unit="img", desc=args.command)
        except ImportError:  # tqdm is the [data] extra: no bar without it
            bar = None
    done = failed = 0
    try:
        for start in range(0, len(records), args.batch_size):
            rows, images, slots = [], [], []
            for rec in records[start:start + args.batch_size]:
                if "error" in rec:
                    rows.append(_public(rec))
                    continue
                if "_error" in rec:  # a record the command itself refused (e.g. no question)
                    rows.append({**_public(rec), "error": rec["_error"]})
                    continue
                img = load_image(rec["_path"])
                if isinstance(img, Skipped):
                    rows.append({**_public(rec), "error": img.reason})
                else:
                    slots.append((len(rows), rec))
                    rows.append(_public(rec))
                    images.append(img)
            if images:
                for (i, _), result in zip(slots, fn(images, [r for _, r in slots]), strict=True):
                    rows[i].update(result)
            for r in rows:
                if "error" in r:
                    failed += 1
                    print(f"blipx {args.command}: skipped {r['image']} ({r['error']})", file=sys.stderr)
                else:
                    done += 1
                sink.write(json.dumps(r) + "\n")
            sink.flush()
            if bar is not None:
                bar.update(len(rows))
    finally:
        if bar is not None:
            bar.close()
    print(f"{done} {what}, {failed} unreadable", file=sys.stderr)
    return 0 if done else 1


class Sink:
    """``--out`` file (JSONL) or stdout, as a context manager."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def __enter__(self):
        if self.path is None:
            self.f = sys.stdout
        else:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.f = open(self.path, "w", encoding="utf-8")
        return self.f

    def __exit__(self, *exc) -> None:
        if self.path is not None:
            self.f.close()
