"""The inference commands (`blipx caption / answer / match / features / classify`) on tiny saved
models: rows parsed and checked against blipx.load's results, unreadable inputs reported per
file, exit codes 0 / 1 / 2 as documented."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import blipx
from blipx.cli import main
from blipx.data import ShapesDataset
from blipx.models import create_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_infer")
    torch.manual_seed(0)
    for fam in ("blip", "albef"):
        model = create_model(f"{fam}_tiny", "pretrain")
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(4.0)
        model.save_pretrained(root / fam)
    create_model("blip_tiny", "vqa").save_pretrained(root / "vqa")  # a pretraining folder's VQA draws fresh weights
    imgs = root / "imgs"
    (imgs / "sub").mkdir(parents=True)
    ds = ShapesDataset("val", num_samples=3, image_size=40)
    for i, name in enumerate(["a.png", "b.png", "sub/c.png"]):
        ds.raw(i)["image"].save(imgs / name)
    (imgs / "broken.png").write_bytes(b"not an image")
    return root


def _rows(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _pipe(setup, fam="blip"):
    return blipx.load(setup / fam, device="cpu")


def _good(setup):
    return [str(setup / "imgs" / n) for n in ("a.png", "b.png", "sub/c.png")]


def test_caption_folder_glob_jsonl_with_scores(setup, capsys, tmp_path):
    out = tmp_path / "caps.jsonl"
    missing = str(setup / "imgs" / "missing.png")
    assert main(["caption", str(setup / "imgs"), missing, "--model", str(setup / "blip"), "--beams", "2",
                 "--max-length", "10", "--batch-size", "2", "--out", str(out), "--no-progress"]) == 0
    rows = _rows(out.read_text())
    err = capsys.readouterr().err
    assert "3 captioned, 2 unreadable" in err and "missing.png (missing)" in err
    by = {r["image"]: r for r in rows}
    assert by[str(setup / "imgs" / "broken.png")] == {"image": str(setup / "imgs" / "broken.png"), "error": "corrupt"}
    assert by[missing] == {"image": missing, "error": "missing"}
    good = _good(setup)
    caps, scores = _pipe(setup).caption([Image.open(p) for p in good], num_beams=2, max_length=10, min_length=5,
                                        return_scores=True)
    assert [by[p]["caption"] for p in good] == caps
    np.testing.assert_allclose([by[p]["score"] for p in good], scores.tolist(), rtol=1e-5)

    # a glob, several captions per image; a JSONL of records (extra fields copied through)
    assert main(["caption", str(setup / "imgs" / "*.png"), "--model", str(setup / "blip"), "--num-captions", "2",
                 "--max-length", "8", "--no-progress"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert [r["image"] for r in rows] == [str(setup / "imgs" / n) for n in ("a.png", "b.png", "broken.png")]
    assert all(len(r["captions"]) == 2 and len(r["scores"]) == 2 for r in rows if "error" not in r)
    ann = tmp_path / "ann.jsonl"
    ann.write_text(json.dumps({"image": "a.png", "id": 7}) + "\nnot json\n" + json.dumps({"id": 8}) + "\n")
    assert main(["caption", str(ann), "--image-root", str(setup / "imgs"), "--model", str(setup / "blip"),
                 "--sample", "--seed", "0", "--max-length", "8", "--dtype", "bf16", "--device", "cpu",
                 "--no-progress"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows[0]["id"] == 7 and rows[0]["image"] == "a.png" and isinstance(rows[0]["caption"], str)
    assert rows[0]["score"] <= 0
    assert rows[1:] == [{"image": f"{ann}:2", "error": "bad_record"}, {"image": f"{ann}:3", "error": "bad_record"}]


def test_caption_exit_codes(setup, capsys, tmp_path):
    img = _good(setup)[0]
    assert main(["caption", img, "--model", str(tmp_path / "no_model"), "--no-progress"]) == 1
    assert "no_model" in capsys.readouterr().err
    assert main(["caption", img, "--model", str(setup / "albef"), "--no-progress"]) == 1  # ALBEF: no captioner
    err = capsys.readouterr().err
    assert "task 'captioner' (for caption())" in err and "AlbefPretrainer" in err
    assert main(["caption", str(setup / "imgs" / "broken.png"), "--model", str(setup / "blip"), "--no-progress"]) == 1
    assert main(["caption", str(tmp_path), "--model", str(setup / "blip"), "--no-progress"]) == 1  # no images
    assert "no input images" in capsys.readouterr().err
    for bad in (["--beams", "2", "--sample"], ["--beams", "2", "--num-captions", "3"], ["--dtype", "int8"],
                ["--top-p", "2"]):
        with pytest.raises(SystemExit) as e:
            main(["caption", img, "--model", str(setup / "blip"), *bad])
        assert e.value.code == 2


@pytest.mark.parametrize("command", ["caption", "answer", "match", "features", "classify"])
def test_help_documents_exit_codes(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out and "usage error" in out and "error row" in out


def test_answer_generate_and_rank(setup, capsys, tmp_path):
    paths = [*_good(setup), str(setup / "imgs" / "nope.png")]
    assert main(["answer", *paths, "--model", str(setup / "vqa"), "--question", "what shape is it?",
                 "--no-progress"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows[-1] == {"image": paths[-1], "question": "what shape is it?", "error": "missing"}
    pipe = _pipe(setup, "vqa")
    ims = [Image.open(p) for p in paths[:3]]
    answers, scores = pipe.answer(ims, "what shape is it?", return_scores=True)
    assert [r["answer"] for r in rows[:3]] == answers
    np.testing.assert_allclose([r["score"] for r in rows[:3]], scores.tolist(), rtol=1e-5)
    cands = tmp_path / "answers.json"
    cands.write_text(json.dumps(["circle", "square", "triangle"]))
    ann = tmp_path / "q.jsonl"
    ann.write_text("".join(json.dumps({"image": p, "question": q}) + "\n" for p, q in
                           zip(paths[:2], ["what shape?", "what colour?"])) + json.dumps({"image": paths[2]}) + "\n")
    assert main(["answer", str(ann), "--model", str(setup / "vqa"), "--answers", str(cands), "--no-progress"]) == 0
    rows = _rows(capsys.readouterr().out)
    ranked, rscores = pipe.answer(ims[:2], ["what shape?", "what colour?"], answers=json.loads(cands.read_text()),
                                  return_scores=True)
    assert [r["answer"] for r in rows[:2]] == ranked and rows[2]["error"] == "no_question"
    np.testing.assert_allclose([r["score"] for r in rows[:2]], rscores.tolist(), rtol=1e-5)
    assert main(["answer", paths[0], "--model", str(setup / "vqa"), "--question", "q", "--answers",
                 str(tmp_path / "none.json"), "--no-progress"]) == 1


def test_match_pairs_and_grid(setup, capsys, tmp_path):
    good = _good(setup)
    ims = [Image.open(p) for p in good]
    pipe = _pipe(setup, "albef")
    assert main(["match", *good, "--model", str(setup / "albef"), "--text", "a red circle", "--no-progress"]) == 0
    rows = _rows(capsys.readouterr().out)
    want = pipe.match(ims, "a red circle")
    assert [r["text"] for r in rows] == ["a red circle"] * 3
    np.testing.assert_allclose([r["itm"] for r in rows], want["itm"].tolist(), rtol=1e-5)
    np.testing.assert_allclose([r["itc"] for r in rows], want["itc"].tolist(), rtol=1e-5, atol=1e-7)
    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle\n\na blue square\nsomething green\n")
    assert main(["match", *good, str(setup / "imgs" / "broken.png"), "--model", str(setup / "albef"),
                 "--texts", str(texts), "--no-progress"]) == 0
    rows = _rows(capsys.readouterr().out)
    grid = pipe.match(ims, ["a red circle", "a blue square", "something green"], grid=True)
    assert rows[0]["texts"] == ["a red circle", "a blue square", "something green"]
    np.testing.assert_allclose([r["itm"] for r in rows[:3]], grid["itm"].tolist(), rtol=1e-5)
    assert rows[3]["error"] == "corrupt"
    ann = tmp_path / "pairs.jsonl"
    ann.write_text(json.dumps({"image": good[0], "text": "a blue square"}) + "\n" + json.dumps({"image": good[1]}))
    assert main(["match", str(ann), "--model", str(setup / "albef"), "--no-progress"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows[0]["itm"] == pytest.approx(grid["itm"][0, 1].item(), rel=1e-5) and rows[1]["error"] == "no_text"


def test_features_safetensors_and_npy(setup, capsys, tmp_path):
    from safetensors import safe_open

    good = _good(setup)
    ims = [Image.open(p) for p in good]
    pipe = _pipe(setup)
    out = tmp_path / "f.safetensors"
    assert main(["features", *good, str(setup / "imgs" / "broken.png"), "--model", str(setup / "blip"),
                 "--text", "a circle", "--text", "a square", "--out", str(out), "--no-progress"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert [r.get("row") for r in rows] == [0, 1, 2, None] and rows[3]["error"] == "corrupt"
    want = pipe.features(ims, ["a circle", "a square"])
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
        torch.testing.assert_close(f.get_tensor("image"), want["image"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(f.get_tensor("text"), want["text"], rtol=1e-5, atol=1e-6)
    assert json.loads(meta["images"]) == good and json.loads(meta["texts"]) == ["a circle", "a square"]
    npy = tmp_path / "mm.npy"
    assert main(["features", *good, "--model", str(setup / "blip"), "--kind", "multimodal", "--text", "a circle",
                 "--out", str(npy), "--no-progress"]) == 0
    capsys.readouterr()
    np.testing.assert_allclose(np.load(npy), pipe.features(ims, "a circle", kind="multimodal")["multimodal"].numpy(),
                               rtol=1e-5, atol=1e-6)
    txt = tmp_path / "t.npy"
    assert main(["features", "--model", str(setup / "blip"), "--text", "x", "--out", str(txt), "--no-progress"]) == 0
    assert np.load(txt).shape == (1, 16)
    for bad in (["--out", str(tmp_path / "f.csv")], ["--out", str(npy), "--text", "y"],  # .npy: one array
                ["--kind", "multimodal", "--text", "a", "--text", "b", "--out", str(out)]):
        with pytest.raises(SystemExit) as e:
            main(["features", *good, "--model", str(setup / "blip"), *bad])
        assert e.value.code == 2
    assert main(["features", *good, "--model", str(tmp_path / "gone"), "--out", str(out), "--no-progress"]) == 1


def test_classify(setup, capsys, tmp_path):
    good = _good(setup)
    ims = [Image.open(p) for p in good]
    labels = ["circle", "square", "triangle", "diamond"]
    for extra, kw in (([], {}), (["--rerank", "--rerank-k", "2"], {"rerank": True, "rerank_k": 2})):
        assert main(["classify", *good, "--model", str(setup / "blip"), "--labels", ",".join(labels), "--top", "3",
                     "--no-progress", *extra]) == 0
        rows = _rows(capsys.readouterr().out)
        probs = _pipe(setup).classify(ims, labels, **kw)
        p, idx = probs.topk(3, dim=1)
        assert [r["labels"] for r in rows] == [[labels[j] for j in row] for row in idx.tolist()]
        np.testing.assert_allclose([r["probs"] for r in rows], p.tolist(), rtol=1e-5, atol=1e-7)
    lf = tmp_path / "labels.txt"
    lf.write_text("circle\nsquare\n")
    assert main(["classify", good[0], "--model", str(setup / "blip"), "--labels-file", str(lf),
                 "--no-progress"]) == 0
    row = _rows(capsys.readouterr().out)[0]
    assert sorted(row["labels"]) == ["circle", "square"] and sum(row["probs"]) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(SystemExit) as e:
        main(["classify", good[0], "--model", str(setup / "blip")])  # no labels
    assert e.value.code == 2
    assert main(["classify", good[0], "--model", str(setup / "blip"), "--labels-file", str(tmp_path / "no.txt"),
                 "--no-progress"]) == 1
