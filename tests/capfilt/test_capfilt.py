"""CapFilt end to end on tiny random models: files in, files out, counts, resume, thresholds."""

import json
import os

import pytest
import torch

import blipx.capfilt.pipeline as pipeline
from blipx.capfilt import CapFilt, CapFiltSettings, merge_and_report
from blipx.data import ShapesDataset
from blipx.models import create_model

N, K = 7, 2


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    ann = ShapesDataset("train", num_samples=N, image_size=32, noise=0.3, seed=1).export(root)
    return root, ann


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return create_model("blip_tiny", "captioner"), create_model("blip_tiny", "retriever")


def run(models, source, out, threshold=0.5, **kw):
    cf = CapFilt(*models, CapFiltSettings(num_captions=K, chunk_size=3, batch_size=2, threshold=threshold, **kw))
    cf.run(source[1], source[0], out, progress=False)
    return merge_and_report(out, threshold)


def read(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_counts_are_consistent(models, source, tmp_path):
    report = run(models, source, tmp_path)
    assert report["images"] == N and report["images_unreadable"] == 0
    assert report["web"]["kept"] + report["web"]["dropped"] == N
    assert report["synthetic"]["kept"] + report["synthetic"]["dropped"] == N * K
    kept = read(tmp_path / "bootstrapped.jsonl")
    assert len(kept) == report["web"]["kept"] + report["synthetic"]["kept"]
    assert all(r["itm_score"] >= 0.5 for r in kept)
    assert (tmp_path / "scores.png").stat().st_size > 1000
    rows = [r for p in sorted((tmp_path / "chunks").iterdir()) for r in read(p)]
    noisy = sum(r.get("is_noisy", False) for r in rows if r["source"] == "web")
    assert noisy == round(0.3 * N)


def test_threshold_edges(models, source, tmp_path):
    everything = run(models, source, tmp_path / "all", threshold=0.0)
    assert everything["web"]["dropped"] == everything["synthetic"]["dropped"] == 0
    nothing = run(models, source, tmp_path / "none", threshold=1.01)
    assert nothing["web"]["kept"] == nothing["synthetic"]["kept"] == 0
    assert read(tmp_path / "none" / "bootstrapped.jsonl") == []
    # A score equal to the threshold is kept (>=).
    rows = read(next((tmp_path / "all" / "chunks").iterdir()))
    edge = rows[0]["itm_score"]
    at_edge = run(models, source, tmp_path / "edge", threshold=edge)
    kept = read(tmp_path / "edge" / "bootstrapped.jsonl")
    assert any(r["itm_score"] == edge for r in kept) and at_edge["web"]["kept"] + at_edge["synthetic"]["kept"] == len(kept)


def test_resume_after_a_kill_gives_the_same_output(models, source, tmp_path, monkeypatch):
    run(models, source, tmp_path / "whole")
    real = pipeline._write_atomic
    calls = {"n": 0}

    def killed_after_first_chunk(path, rows):
        if calls["n"] == 1:
            raise KeyboardInterrupt  # the process dies while working on the second chunk
        calls["n"] += 1
        real(path, rows)

    monkeypatch.setattr(pipeline, "_write_atomic", killed_after_first_chunk)
    with pytest.raises(KeyboardInterrupt):
        run(models, source, tmp_path / "resumed")
    assert len(list((tmp_path / "resumed" / "chunks").glob("chunk-*.jsonl"))) == 1
    monkeypatch.setattr(pipeline, "_write_atomic", real)
    run(models, source, tmp_path / "resumed")
    assert read(tmp_path / "resumed" / "bootstrapped.jsonl") == read(tmp_path / "whole" / "bootstrapped.jsonl")
    assert (tmp_path / "resumed" / "report.json").read_text() == (tmp_path / "whole" / "report.json").read_text()


def test_unreadable_images_are_skipped_and_reported(models, source, tmp_path):
    root, ann = source
    entries = read(ann)
    entries[1]["image"] = "images/train/missing.png"
    broken = root / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    entries[2]["image"] = "broken.png"
    bad_ann = tmp_path / "bad.jsonl"
    bad_ann.write_text("".join(json.dumps(e) + "\n" for e in entries))
    cf = CapFilt(*models, CapFiltSettings(num_captions=K, chunk_size=4, batch_size=3))
    cf.run(bad_ann, root, tmp_path / "out", progress=False)
    report = merge_and_report(tmp_path / "out")
    assert report["images_unreadable"] == 2
    assert report["synthetic"]["kept"] + report["synthetic"]["dropped"] == (N - 2) * K


def test_two_ranks_split_the_chunks(models, source, tmp_path):
    cf = CapFilt(*models, CapFiltSettings(num_captions=K, chunk_size=2, batch_size=2))
    assert cf.run(source[1], source[0], tmp_path, rank=0, world=2, progress=False) == 2  # chunks 0, 2
    assert cf.run(source[1], source[0], tmp_path, rank=1, world=2, progress=False) == 2  # chunks 1, 3
    assert sorted(os.listdir(tmp_path / "chunks")) == [f"chunk-{c:06d}.jsonl" for c in range(4)]


def test_a_folder_of_another_run_is_refused(models, source, tmp_path):
    """Resuming into a folder written with other settings or another source would mix two runs'
    chunks; it is an error naming what differs. The same run resumes as before."""
    run(models, source, tmp_path)
    run(models, source, tmp_path)  # same run: resumes (nothing left to do)
    with pytest.raises(ValueError, match="num_captions"):
        cf = CapFilt(*models, CapFiltSettings(num_captions=K + 1, chunk_size=3, batch_size=2))
        cf.run(source[1], source[0], tmp_path, progress=False)
    other = tmp_path.parent / f"{tmp_path.name}-other.jsonl"
    other.write_text("".join(line for line in open(source[1], encoding="utf-8").readlines()[:3]))
    with pytest.raises(ValueError, match="source"):
        run(models, (source[0], other), tmp_path)
