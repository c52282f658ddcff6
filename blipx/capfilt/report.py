"""Merges CapFilt chunks into the bootstrapped annotation file and writes the report."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from blipx.weights.io import atomic_write


def read_rows(out: Path) -> list[dict]:
    """Every row a CapFilt run in ``out`` has written (its ``chunks/chunk-*.jsonl``, in order)."""
    rows = []
    for path in sorted((out / "chunks").glob("chunk-*.jsonl")):
        with open(path, encoding="utf-8") as f:
            rows.extend(json.loads(line) for line in f if line.strip())
    return rows


def _plot_histograms(rows: list[dict], threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for source in ("web", "synthetic"):
        scores = [r["itm_score"] for r in rows if r.get("source") == source]
        if scores:
            ax.hist(scores, bins=40, range=(0, 1), alpha=0.6, label=f"{source} ({len(scores)})")
    ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold}")
    ax.set_xlabel("ITM match probability")
    ax.set_ylabel("captions")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def merge_and_report(out_dir: str | os.PathLike, threshold: float = 0.5) -> dict:
    """Write ``bootstrapped.jsonl`` (kept captions, official format + source + itm_score),
    ``report.json`` and ``scores.png``; returns the report (caption counts per source, and the
    skips: ``images_unreadable``, ``records_skipped`` and ``skipped`` {reason: count})."""
    from blipx.data.shapes import caption_matches

    out = Path(out_dir)
    rows = read_rows(out)
    scored = [r for r in rows if r.get("source") in ("web", "synthetic")]
    skipped = [r for r in rows if r.get("source") == "skipped"]
    report: dict = {
        "images": len({str(r["image_id"]) for r in rows if "image_id" in r}),
        # images of good records that could not be used (unreadable, too large, outside the root)
        "images_unreadable": sum("image" in r for r in skipped),
        # records (or single captions of a list) refused while reading, located by file:line in the rows
        "records_skipped": sum("image" not in r for r in skipped),
        "skipped": dict(sorted(Counter(r["reason"] for r in skipped).items())),
    }
    for source in ("web", "synthetic"):
        mine = [r for r in scored if r["source"] == source]
        report[source] = {"kept": sum(r["kept"] for r in mine), "dropped": sum(not r["kept"] for r in mine)}
    web = [r for r in scored if r["source"] == "web" and "is_noisy" in r]
    if web:  # the filter as a detector of wrong web captions
        noisy = sum(r["is_noisy"] for r in web)
        dropped = sum(not r["kept"] for r in web)
        caught = sum(r["is_noisy"] and not r["kept"] for r in web)
        report["filter_precision"] = caught / dropped if dropped else None
        report["filter_recall"] = caught / noisy if noisy else None
    syn = [r for r in scored if r["source"] == "synthetic" and "objects" in r]
    if syn:  # ground truth of the scene: how often the captioner is right
        report["synthetic_correct"] = sum(caption_matches(r["caption"], r["objects"]) for r in syn) / len(syn)
        kept = [r for r in syn if r["kept"]]
        report["synthetic_kept_correct"] = (sum(caption_matches(r["caption"], r["objects"]) for r in kept) / len(kept)
                                            if kept else None)
    lines = []
    for r in scored:
        if r["kept"]:
            entry = {"image": r["image"], "caption": r["caption"], "image_id": r["image_id"],
                     "source": r["source"], "itm_score": r["itm_score"]}
            if "objects" in r:
                entry["objects"] = r["objects"]
            lines.append(json.dumps(entry) + "\n")
    atomic_write(out / "bootstrapped.jsonl", lambda tmp: Path(tmp).write_text("".join(lines), encoding="utf-8"))
    (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    _plot_histograms(scored, threshold, out / "scores.png")
    return report
