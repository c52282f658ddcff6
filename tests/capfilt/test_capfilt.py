"""CapFilt end to end on tiny random models: files in, files out, counts, resume, thresholds."""

import copy
import json
import os

import pytest
import torch
from PIL import Image

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
    with pytest.raises(ValueError, match="input"):
        run(models, (source[0], other), tmp_path)


def _nudged(model):
    """A copy with one weight changed by 1e-3: same class, config, size and file layout."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-3
    return other


def test_resume_refuses_other_weights_or_input_content_and_says_which(models, source, tmp_path):
    """Settings, path and size alone are not the run: another captioner or filter, or an input
    edited in place to the same size, would mix two runs' chunks. Fingerprints catch each."""
    root, ann = source
    lines = open(ann, encoding="utf-8").readlines()[:4]
    src = tmp_path / "src.jsonl"
    src.write_text("".join(lines), encoding="utf-8")
    out = tmp_path / "out"
    captioner, filt = models
    settings = dict(num_captions=1, chunk_size=2, batch_size=2)
    CapFilt(captioner, filt, CapFiltSettings(**settings)).run(src, root, out, progress=False)
    with pytest.raises(ValueError, match="changed: the captioner's weights") as e:
        CapFilt(_nudged(captioner), filt, CapFiltSettings(**settings)).run(src, root, out, progress=False)
    assert "filter" not in str(e.value) and "input" not in str(e.value)
    with pytest.raises(ValueError, match="changed: the filter's weights"):
        CapFilt(captioner, _nudged(filt), CapFiltSettings(**settings)).run(src, root, out, progress=False)
    edited = lines[0].replace('"caption": "', '"caption": "X', 1).replace(' ', '', 1)  # same size
    assert len(edited) == len(lines[0]) and edited != lines[0]
    src.write_text("".join([edited] + lines[1:]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"changed: the input's content \(.*src.jsonl: \d+ bytes"):
        CapFilt(captioner, filt, CapFiltSettings(**settings)).run(src, root, out, progress=False)
    with pytest.raises(ValueError, match=r"changed: .*the settings num_captions: 1 -> 2"):
        CapFilt(captioner, filt, CapFiltSettings(**{**settings, "num_captions": 2})).run(src, root, out,
                                                                                       progress=False)
    # The same content elsewhere, and the same weights in another object, is the same run.
    src.write_text("".join(lines), encoding="utf-8")
    moved = tmp_path / "moved.jsonl"
    moved.write_bytes(src.read_bytes())
    assert CapFilt(copy.deepcopy(captioner), filt, CapFiltSettings(**settings)).run(moved, root, out,
                                                                                  progress=False) == 0


def test_bad_records_are_skipped_and_reported(models, source, tmp_path):
    """One bad record (not a string, no caption, lone surrogate, not UTF-8, not JSON, only
    punctuation) no longer stops CapFilt: each is a counted row naming file and line."""
    root, ann = source
    good = open(ann, "rb").read().splitlines()[:3]
    bad = [b'{"image": "x.png", "caption": 5}', b'{"image": "x.png"}',
           b'{"image": "x.png", "caption": "\\udc00"}',  # a JSON escape of a lone surrogate
           b'{"image": "x.png", "caption": "caf\xe9"}',  # a latin-1 byte
           b'{"image": ', b'{"image": "x.png", "caption": "?!..."}']  # only "?" survives BLIP cleaning
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join([good[0]] + bad[:3] + [good[1]] + bad[3:] + [good[2]]) + b"\n")
    report = run(models, (root, path), tmp_path / "out")
    assert report["records_skipped"] == 6 and report["images_unreadable"] == 0
    assert report["skipped"] == {"bad_record": 5, "no_caption": 1}
    assert report["web"]["kept"] + report["web"]["dropped"] == 3
    assert report["synthetic"]["kept"] + report["synthetic"]["dropped"] == 3 * K
    rows = [r for p in sorted((tmp_path / "out" / "chunks").iterdir()) for r in read(p)]
    where = sorted(int(r["where"].rsplit(":", 1)[1]) for r in rows if r["source"] == "skipped")
    assert where == [2, 3, 4, 6, 7, 8] and all(r["where"].startswith(str(path)) for r in rows if "where" in r)


def test_images_outside_the_root_or_too_large_are_skipped_unless_allowed(models, source, tmp_path):
    root, ann = source
    entries = read(ann)[:3]
    outside = tmp_path / "outside.png"
    Image.new("RGB", (32, 32), (9, 9, 9)).save(outside)
    entries[0]["image"] = os.path.relpath(outside, root)  # "../.../outside.png"
    entries[1]["image"] = str(outside)
    Image.new("RGB", (40, 40)).save(root / "large.png")
    entries[2]["image"] = "large.png"
    path = tmp_path / "esc.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    report = run(models, (root, path), tmp_path / "refused", max_pixels=32 * 32)
    assert report["skipped"] == {"outside_root": 2, "too_large": 1} and report["images_unreadable"] == 3
    assert report["web"] == {"kept": 0, "dropped": 0}
    report = run(models, (root, path), tmp_path / "allowed", allow_outside_root=True)
    assert report["skipped"] == {} and report["web"]["kept"] + report["web"]["dropped"] == 3
