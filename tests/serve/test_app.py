"""``blipx serve`` through FastAPI's TestClient: every endpoint on a tiny saved BLIP and a real
CapFilt folder, the upload limits, and the refusal of every way out of the served folders."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil

import pytest
import torch
from PIL import Image

from tests.serve.conftest import MAGENTA

from fastapi.testclient import TestClient  # noqa: E402  (conftest skips without fastapi)

import blipx  # noqa: E402
from blipx.serve import create_app  # noqa: E402
from blipx.serve.overlay import display_size, gradcam_overlay  # noqa: E402


@pytest.fixture(scope="module")
def pipeline(serve_tree):
    return blipx.load(serve_tree["model"], device="cpu")


@pytest.fixture(scope="module")
def client(pipeline, serve_tree):
    app = create_app(pipeline, model_name="tiny", images=serve_tree["pick"], capfilt=serve_tree["capfilt"])
    return TestClient(app)


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def magenta_upload(size=(40, 40)):
    return {"file": ("m.png", png(Image.new("RGB", size, MAGENTA)), "image/png")}


def rows(serve_tree) -> list[dict]:
    chunks = sorted((serve_tree["capfilt"] / "chunks").iterdir())
    return [json.loads(line) for p in chunks for line in open(p, encoding="utf-8")]


def data_uri_image(page: str, img_id: str) -> Image.Image:
    m = re.search(rf'id="{img_id}"[^>]*src="data:image/png;base64,([^"]+)"', page)
    assert m, f"no inline <img id={img_id}>"
    return Image.open(io.BytesIO(base64.b64decode(m.group(1))))


# -- Try a model ----------------------------------------------------------------------------------


def test_health_reports_what_the_model_can_do(client):
    r = client.get("/healthz").json()
    assert r["ok"] and r["can"] == {"caption": True, "answer": True, "match": True, "gradcam": True}
    assert "BlipPretrainer" in r["holds"] and r["images"] and r["capfilt"]
    assert client.get("/", follow_redirects=False).headers["location"] == "/try"


def test_api_caption_gives_beam_and_nucleus_captions_with_the_pipelines_scores(client, pipeline):
    r = client.post("/api/caption", files=magenta_upload())
    assert r.status_code == 200
    out = r.json()
    assert len(out["beam"]) == 1 and len(out["nucleus"]) == 3
    caps, scores = pipeline.caption([Image.new("RGB", (40, 40), MAGENTA)], num_beams=3, return_scores=True)
    assert out["beam"][0]["caption"] == caps[0]  # beam search is deterministic
    assert out["beam"][0]["score"] == pytest.approx(float(scores[0]), abs=1e-5)
    assert all(c["caption"] and c["score"] < 0 for c in out["nucleus"])
    named = client.post("/api/caption", data={"image": "magenta.png"}).json()
    assert named["beam"][0]["caption"]


def test_api_match_answer_and_gradcam_agree_with_the_pipeline(client, pipeline):
    img = Image.new("RGB", (40, 40), MAGENTA)
    r = client.post("/api/match", data={"texts": "a magenta square\n\n a cat \n"}, files=magenta_upload())
    got = r.json()["match"]
    assert [m["text"] for m in got] == ["a magenta square", "a cat"]  # blank lines dropped, stripped
    want = pipeline.match([img, img], ["a magenta square", "a cat"])
    assert [m["itm"] for m in got] == pytest.approx(want["itm"].tolist(), abs=1e-6)
    assert [m["itc"] for m in got] == pytest.approx(want["itc"].tolist(), abs=1e-6)
    a = client.post("/api/answer", data={"question": "what colour is it?"}, files=magenta_upload()).json()
    assert a["answer"] == pipeline.answer([img], ["what colour is it?"])[0]
    r = client.post("/api/gradcam", data={"text": "a magenta square"}, files=magenta_upload())
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    overlay = Image.open(io.BytesIO(r.content)).convert("RGB")
    assert overlay.size == display_size((40, 40))
    heat = pipeline.gradcam(img, "a magenta square")
    assert overlay.tobytes() == gradcam_overlay(img, heat).tobytes()
    assert client.post("/api/match", data={"texts": " \n "}, files=magenta_upload()).status_code == 400
    assert client.post("/api/caption").status_code == 400  # no image at all


def test_gradcam_overlay_puts_the_heat_where_the_map_is():
    img = Image.new("RGB", (32, 32), MAGENTA)
    out = gradcam_overlay(img, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert out.size == (256, 256)
    hot, cold = out.getpixel((20, 20)), out.getpixel((236, 236))
    assert hot[0] > 100 and hot[2] < 60  # jet's dark red over the hot cell
    assert abs(cold[0] - 255) < 60 and cold[1] < 60 and abs(cold[2] - 255) < 60  # mostly the image
    assert gradcam_overlay(img, torch.zeros(2, 2)).getpixel((100, 100)) == MAGENTA  # nothing to show
    with pytest.raises(ValueError, match="heat"):
        gradcam_overlay(img, torch.zeros(4))


def test_try_page_for_a_picked_image_shows_every_result(client):
    r = client.get("/try", params={"image": "magenta.png", "question": "what colour?",
                                   "texts": "a magenta square\na <b>bold</b> cat"})
    assert r.status_code == 200
    page = r.text
    beam = client.post("/api/caption", data={"image": "magenta.png"}).json()["beam"][0]
    assert html.escape(beam["caption"], quote=False) in page and f"{beam['score']:.3f}" in page
    assert page.count('class="nucleus"') == 3
    assert '<img id="input-image" class="shown" src="/images/file?name=magenta.png"' in page
    answer = client.post("/api/answer", data={"question": "what colour?", "image": "magenta.png"}).json()
    assert f'<strong class="answer">{html.escape(answer["answer"], quote=False)}</strong>' in page
    match = client.post("/api/match", data={"texts": "a magenta square", "image": "magenta.png"}).json()["match"]
    assert f"{match[0]['itm']:.3f}" in page
    assert "a &lt;b&gt;bold&lt;/b&gt; cat" in page and "<b>bold</b>" not in page  # texts are escaped
    src = html.unescape(re.search(r'id="gradcam" class="shown" src="([^"]+)"', page).group(1))
    overlay = client.get(src)
    assert overlay.status_code == 200 and Image.open(io.BytesIO(overlay.content)).size == (256, 256)
    assert "magenta.png" in client.get("/api/images").json()["images"]
    assert client.get("/images/file", params={"name": "sub/red.png"}).status_code == 200
    # the pretraining checkpoint answers through the official conversion: the page says so
    assert "not a fine-tuned VQA model" in page


def test_try_page_upload_inlines_the_image_and_its_overlay(client):
    r = client.post("/try", data={"question": "", "texts": "", "gradcam_text": "a square"},
                    files=magenta_upload((30, 20)))
    assert r.status_code == 200
    shown = data_uri_image(r.text, "input-image").convert("RGB")
    assert shown.size == display_size((30, 20)) and shown.getpixel((5, 5)) == MAGENTA
    assert data_uri_image(r.text, "gradcam").size == shown.size
    assert "Grad-CAM (ITM) of “a square”" in r.text
    assert client.get("/try").status_code == 200  # the empty page


def test_a_model_that_cannot_answer_or_match_says_so(serve_tree, tmp_path):
    from blipx.models import create_model

    torch.manual_seed(0)
    create_model("blip_tiny", "captioner").save_pretrained(tmp_path / "cap")
    c = TestClient(create_app(blipx.load(tmp_path / "cap", device="cpu"), images=serve_tree["pick"]))
    assert c.get("/healthz").json()["can"] == {"caption": True, "answer": False, "match": False, "gradcam": False}
    page = c.get("/try", params={"image": "magenta.png", "question": "what?"}).text
    assert "This model cannot answer questions" in page and "This model cannot match texts" in page
    assert 'class="beam"' in page and 'id="gradcam"' not in page
    r = c.post("/api/answer", data={"question": "what?", "image": "magenta.png"})
    assert r.status_code == 409 and "cannot answer questions" in r.json()["detail"]
    assert c.post("/api/match", data={"texts": "x", "image": "magenta.png"}).status_code == 409
    assert c.post("/api/gradcam", data={"text": "x", "image": "magenta.png"}).status_code == 409
    # no --capfilt folder: the review page and its files are not there
    assert c.get("/review").status_code == 404 and c.get("/review/image", params={"name": "a.png"}).status_code == 404
    assert "Review CapFilt" not in page


# -- Review CapFilt -------------------------------------------------------------------------------


def test_review_page_shows_every_image_caption_score_and_decision(client, serve_tree):
    page = client.get("/review").text
    scored = [r for r in rows(serve_tree) if r["source"] in ("web", "synthetic")]
    for r in scored:
        assert html.escape(r["caption"], quote=False) in page
        assert f"{r['itm_score']:.4f}" in page
    assert page.count('class="badge kept"') == sum(r["kept"] for r in scored)
    assert page.count('class="badge dropped"') == sum(not r["kept"] for r in scored)
    for name in {r["image"] for r in scored}:
        assert f'src="/review/image?name={name}"' in page
        assert client.get("/review/image", params={"name": name}).status_code == 200
    assert "a magenta square" in page
    assert '<img id="histogram" src="/review/scores.png"' in page
    hist = client.get("/review/scores.png")
    assert hist.content == (serve_tree["capfilt"] / "scores.png").read_bytes()
    report = json.loads((serve_tree["capfilt"] / "report.json").read_text())
    assert f'<td>web</td><td class="num">{report["web"]["kept"]}</td><td class="num">{report["web"]["dropped"]}' in page


@pytest.mark.parametrize("query", [
    {"decision": "kept"}, {"decision": "dropped"}, {"source": "web", "decision": "dropped"},
    {"source": "synthetic"}, {"min_score": 0.5219, "max_score": 1.0}, {"max_score": 0.0},
])
def test_review_filters_by_decision_source_and_score(client, serve_tree, query):
    out = client.get("/api/review", params=query).json()
    scored = [r for r in rows(serve_tree) if r["source"] in ("web", "synthetic")]

    def passes(r):
        d, s = query.get("decision", "all"), query.get("source", "all")
        return ((d == "all" or r["kept"] == (d == "kept")) and (s == "all" or r["source"] == s)
                and query.get("min_score", 0.0) <= r["itm_score"] <= query.get("max_score", 1.0))

    want = [r for r in scored if passes(r)]
    assert out["total_captions"] == len(want)
    assert out["total_images"] == len({r["image"] for r in want})
    assert sorted(c["caption"] for i in out["images"] for c in i["captions"] if c["matches"]) == \
        sorted(r["caption"] for r in want)
    page = client.get("/review", params=query).text
    assert f"{len({r['image'] for r in want})} images, {len(want)} captions match" in page


def test_review_refuses_bad_filters(client):
    for bad in ({"decision": "maybe"}, {"source": "x"}, {"min_score": 2}, {"max_score": -1}, {"page": 0}):
        assert client.get("/api/review", params=bad).status_code == 422, bad


def test_review_pages_through_many_images(pipeline, serve_tree):
    from blipx.serve.review import CapfiltFolder

    folder = CapfiltFolder(serve_tree["capfilt"])
    first, second = folder.query(per_page=3), folder.query(page=2, per_page=3)
    assert (first.pages, len(first.images), len(second.images)) == (2, 3, 2)
    assert folder.query(page=99, per_page=3).page == 2
    with pytest.raises(FileNotFoundError, match="--capfilt: .* not a blipx capfilt output folder"):
        CapfiltFolder(serve_tree["pick"])


def test_review_reads_images_from_the_recorded_image_folder(serve_tree, tmp_path):
    """settings.json records the image folder the run read, so the review finds the images
    even when the input file lives elsewhere (runs written before that: the input's folder)."""
    from blipx.serve.review import CapfiltFolder

    recorded = json.loads((serve_tree["capfilt"] / "settings.json").read_text())["input"]
    assert recorded["image_root"] == os.path.abspath(serve_tree["data"])
    moved = tmp_path / "run"
    shutil.copytree(serve_tree["capfilt"], moved)
    settings = json.loads((moved / "settings.json").read_text())
    settings["input"]["path"] = str(tmp_path / "elsewhere" / "ann.jsonl")
    (moved / "settings.json").write_text(json.dumps(settings))
    assert CapfiltFolder(moved).image_root == serve_tree["data"]
    del settings["input"]["image_root"]  # an older run: the input file's folder
    (moved / "settings.json").write_text(json.dumps(settings))
    assert CapfiltFolder(moved).image_root == tmp_path / "elsewhere"


# -- safety ---------------------------------------------------------------------------------------


def test_uploads_are_size_limited_and_type_checked(pipeline, serve_tree):
    c = TestClient(create_app(pipeline, max_upload_bytes=4096, max_pixels=64 * 64))
    ok = magenta_upload()
    assert c.post("/api/caption", files=ok).status_code == 200
    noise = torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8).numpy()
    big = png(Image.fromarray(noise))  # > 4096 bytes, < the body limit: refused after reading
    assert len(big) > 4096
    r = c.post("/api/caption", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "limit is 4096 bytes" in r.json()["detail"]
    huge = b"\0" * (2 * 2**20)  # past the whole-body limit: cut off before it is parsed
    assert c.post("/api/caption", files={"file": ("huge.png", huge, "image/png")}).status_code == 413
    r = c.post("/api/caption", files={"file": ("x.png", b"GIF89a not really", "image/png")})
    assert r.status_code == 415 and "not an image" in r.json()["detail"]
    r = c.post("/api/caption", files={"file": ("x.png", png(Image.new("RGB", (9, 9)))[:40], "image/png")})
    assert r.status_code == 415  # truncated PNG
    wide = png(Image.new("RGB", (65, 64)))  # one column past max_pixels, found from the header
    r = c.post("/api/caption", files={"file": ("wide.png", wide, "image/png")})
    assert r.status_code == 413 and "max_pixels" in r.json()["detail"]
    page = c.post("/try", files={"file": ("x.txt", b"hello", "text/plain")})
    assert page.status_code == 415 and 'id="error"' in page.text


def test_default_upload_limit_is_10_mb(client):
    over = b"\x89PNG" + b"\0" * (10 * 2**20)  # 10 MB + 4 bytes: under the body limit, over the file limit
    r = client.post("/api/caption", files={"file": ("over.png", over, "image/png")})
    assert r.status_code == 413 and "10485760" in r.json()["detail"]


ESCAPES = ["../secret.png", "sub/../../secret.png", "escape.png", "%2e%2e/secret.png", "..\\secret.png", "",
           "/etc/passwd", "a\0.png"]


def test_picked_images_never_leave_the_images_folder(client, serve_tree):
    secret = str(serve_tree["secret"])
    for name in ESCAPES + [secret]:
        for r in (client.get("/images/file", params={"name": name}),
                  client.post("/api/caption", data={"image": name}),
                  client.get("/gradcam.png", params={"image": name, "text": "x"})):
            assert r.status_code in (400, 403, 404, 422), (name, r.status_code)
            assert r.content != serve_tree["secret"].read_bytes()
    assert client.get("/images/file", params={"name": "../secret.png"}).status_code == 403
    assert client.get("/images/file", params={"name": secret}).status_code == 403
    assert client.get("/images/file", params={"name": "escape.png"}).status_code == 403  # symlink out
    assert client.get("/images/file", params={"name": "notes.txt"}).status_code == 404  # not an image
    assert client.get("/images/file", params={"name": "nothere.png"}).status_code == 404
    assert "escape.png" not in client.get("/api/images").json()["images"]
    page = client.get("/try", params={"image": "../secret.png"})
    assert page.status_code == 403 and "outside the served folder" in page.text
    for url in ("/static/..%2Fsecret.png", "/static/%2e%2e/%2e%2e/secret.png", "/static/..%2F..%2Fsecret.png"):
        r = client.get(url)
        assert r.status_code == 404 and r.content != serve_tree["secret"].read_bytes(), url


def test_review_images_are_only_those_of_the_run_inside_its_folder(client, serve_tree, pipeline, tmp_path):
    assert client.get("/review/image", params={"name": "escape.png"}).status_code == 403
    assert client.get("/review/image", params={"name": "../secret.png"}).status_code == 403
    assert client.get("/review/image", params={"name": str(serve_tree["secret"])}).status_code == 403
    Image.new("RGB", (4, 4)).save(serve_tree["data"] / "not-in-the-run.png")
    assert client.get("/review/image", params={"name": "not-in-the-run.png"}).status_code == 404
    # a row that names a file outside the image folder (a tampered folder) is still refused
    out = tmp_path / "capfilt"
    shutil.copytree(serve_tree["capfilt"], out)
    bad = {"image": "../secret.png", "image_id": 9, "caption": "x", "source": "web", "itm_score": 0.9, "kept": True}
    skipped = {"image": "gone.png", "image_id": 10, "source": "skipped", "reason": "missing", "where": "a:3",
               "detail": "no such file"}
    (out / "chunks" / "chunk-000099.jsonl").write_text(json.dumps(bad) + "\n" + json.dumps(skipped) + "\n")
    c = TestClient(create_app(pipeline, capfilt=out, capfilt_images=serve_tree["data"]))
    assert "../secret.png" in {i["image"] for i in c.get("/api/review").json()["images"]}
    assert c.get("/review/image", params={"name": "../secret.png"}).status_code == 403
    page = c.get("/review").text  # the run's skipped images are listed with their reason
    assert "<h2>Skipped (1)</h2>" in page and "<td>gone.png</td><td>missing</td>" in page


def test_cli_serve_binds_to_localhost_by_default(serve_tree):
    from blipx.cli import build_parser, main

    args = build_parser().parse_args(["serve", "--model", str(serve_tree["model"])])
    assert (args.host, args.port, args.max_upload_mb) == ("127.0.0.1", 8000, 10.0)
    assert main(["serve", "--model", str(serve_tree["base"] / "missing")]) == 1
    assert main(["serve", "--model", str(serve_tree["model"]), "--max-upload-mb", "0"]) == 2
    assert main(["serve", "--model", str(serve_tree["model"]), "--images", str(serve_tree["base"] / "nope")]) == 1
    assert main(["serve", "--model", str(serve_tree["model"]), "--capfilt", str(serve_tree["pick"])]) == 1
    with pytest.raises(NotADirectoryError, match="--images"):
        create_app(None, images=serve_tree["base"] / "nope")
