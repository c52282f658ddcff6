"""``blipx serve``: a small local web app over :func:`blipx.load` (FastAPI + Jinja2 templates).

Two pages:

- ``/try`` ("Try a model"): upload an image, or pick one of the ``--images`` folder; captions by
  beam search and by nucleus sampling with their scores, the answer to a typed question (when the
  model answers questions), ITM match probabilities and ITC similarities of typed texts, and a
  Grad-CAM overlay drawn server-side (:mod:`blipx.serve.overlay`).
- ``/review`` ("Review CapFilt"): a ``blipx capfilt`` output folder, image by image with its web
  and synthetic captions, ITM scores and kept/dropped decisions; filtered by decision, source and
  score range; with the run's report and score histograms.

The same results are JSON under ``/api/...``. What the server reads is limited to the folders it
was given (:class:`blipx.serve.files.ServedFolder`) and to uploads that PIL decodes, of at most
``max_upload_bytes``; request bodies above that (plus form overhead) are cut off with 413 before
they are read (FastAPI's ``max_body_size``).
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at runtime.

import base64
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from PIL import Image

from blipx.data.images import MAX_PIXELS
from blipx.serve.files import MAX_UPLOAD_BYTES, Refused, ServedFolder, decode_upload
from blipx.serve.overlay import display_size, gradcam_overlay, png_bytes
from blipx.serve.review import CapfiltFolder, Decision, Source

HERE = Path(__file__).parent
FORM_OVERHEAD_BYTES = 256 * 1024  # multipart boundaries, headers and the text fields of a form


@dataclass
class Decoding:
    """The settings of the try page's captions (the official BLIP demo's: beam 3 / nucleus 0.9)."""

    num_beams: int = 3
    top_p: float = 0.9
    num_nucleus: int = 3
    max_length: int = 30
    min_length: int = 5


class ModelService:
    """The loaded :class:`blipx.api.Pipeline`, called one request at a time (a lock: the model,
    its generation caches and Grad-CAM's gradient hooks are not shared between threads), with
    its outputs turned into the rows the pages and the JSON API show.

    What the checkpoint can do is asked once, up front (:meth:`Pipeline.supports` loads each
    model it needs): a captioner cannot match, a retriever cannot caption, ALBEF cannot caption,
    and a pretraining checkpoint answers through the official pretraining->VQA conversion (the
    pipeline's warning about that is shown on the page)."""

    METHODS = ("caption", "answer", "match", "gradcam")

    def __init__(self, pipeline: Any, name: str, decoding: Decoding | None = None) -> None:
        self.pipeline = pipeline
        self.name = name
        self.decoding = decoding or Decoding()
        self.lock = threading.Lock()
        self.can: dict[str, bool] = {}
        self.notes: dict[str, str] = {}
        for method in self.METHODS:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)
                self.can[method] = bool(pipeline.supports(method))
            said = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
            if said:
                self.notes[method] = said[0]
            for w in caught:  # still printed, as without the catch
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)

    @property
    def holds(self) -> str:
        return str(getattr(self.pipeline, "holds", "a model"))

    def require(self, method: str) -> None:
        if not self.can[method]:
            verb = {"caption": "caption images", "answer": "answer questions", "match": "match texts",
                    "gradcam": "draw Grad-CAM maps"}[method]
            raise Refused(409, f"the model ({self.holds}) cannot {verb}")

    def captions(self, image: Image.Image) -> dict[str, list[dict]]:
        """Beam-search and nucleus-sampled captions, each with the pipeline's score (the
        caption's length-penalised log-probability, HF's ``sequences_scores``)."""
        self.require("caption")
        d = self.decoding
        common = dict(return_scores=True, max_length=d.max_length, min_length=d.min_length)
        with self.lock:
            beam, beam_scores = self.pipeline.caption([image], num_captions=1, num_beams=d.num_beams, **common)
            nucleus, nucleus_scores = self.pipeline.caption([image], num_captions=d.num_nucleus, do_sample=True,
                                                            top_p=d.top_p, top_k=0, **common)
        if d.num_nucleus == 1:
            nucleus, nucleus_scores = [nucleus], nucleus_scores[:, None]
        return {"beam": [{"caption": beam[0], "score": float(beam_scores[0])}],
                "nucleus": [{"caption": c, "score": float(s)} for c, s in zip(nucleus[0], nucleus_scores[0])]}

    def answer(self, image: Image.Image, question: str) -> dict:
        self.require("answer")
        with self.lock:
            answers, scores = self.pipeline.answer([image], [question], return_scores=True)
        return {"question": question, "answer": answers[0], "score": float(scores[0])}

    def match(self, image: Image.Image, texts: list[str]) -> list[dict]:
        self.require("match")
        if not texts:
            return []
        with self.lock:
            out = self.pipeline.match([image], texts)  # one image, repeated for each text
        return [{"text": t, "itm": float(p), "itc": float(c)} for t, p, c in zip(texts, out["itm"], out["itc"])]

    def gradcam_png(self, image: Image.Image, text: str) -> bytes:
        self.require("gradcam")
        with self.lock:
            heat = self.pipeline.gradcam(image, text)
        return png_bytes(gradcam_overlay(image, heat, display_size(image.size)))


# The review filters; a value outside these is a 422 naming the parameter.
DecisionQ = Annotated[Decision, Query()]
SourceQ = Annotated[Source, Query()]
ScoreQ = Annotated[float, Query(ge=0.0, le=1.0)]
PageQ = Annotated[int, Query(ge=1)]

# -- the app ----------------------------------------------------------------------------------------


def _split_texts(texts: str) -> list[str]:
    return [t.strip() for t in texts.splitlines() if t.strip()][:20]


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def create_app(model: Any, *, model_name: str = "model", images: str | os.PathLike | None = None,
               capfilt: str | os.PathLike | None = None, capfilt_images: str | os.PathLike | None = None,
               max_upload_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int | None = MAX_PIXELS,
               decoding: Decoding | None = None) -> FastAPI:
    """The app. ``model``: a :class:`blipx.api.Pipeline` (what :func:`blipx.load` returns);
    ``images``: a folder whose images the try page offers; ``capfilt``: a ``blipx capfilt``
    output folder for the review page, with ``capfilt_images`` the folder its rows' image paths
    are relative to (default: the input file's folder recorded in its settings.json).
    ``max_upload_bytes`` / ``max_pixels``: the largest uploaded file, and the most pixels of an
    image (uploaded or read; checked on the header, before decoding)."""
    if max_upload_bytes < 1:
        raise ValueError(f"max_upload_bytes must be >= 1, got {max_upload_bytes}")
    picks = ServedFolder(images, "--images") if images is not None else None
    review = CapfiltFolder(capfilt, capfilt_images) if capfilt is not None else None
    review_files = ServedFolder(review.image_root, "--capfilt-images", allowed=review.image_names) if review else None
    service = ModelService(model, model_name, decoding)  # loads the models: after the cheap checks

    app = FastAPI(title="blipx serve", docs_url=None, redoc_url=None, openapi_url=None,
                  max_body_size=max_upload_bytes + FORM_OVERHEAD_BYTES)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    max_mb = round(max_upload_bytes / 2**20, 1)

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> Response:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.middleware("http")
    async def no_sniff(request: Request, call_next):
        response = await call_next(request)
        # Served files are images by their suffix only; the browser must not guess otherwise.
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def the_image(file: UploadFile | None, name: str | None) -> tuple[Image.Image, str | None]:
        """The request's image: an upload, or a name in --images; and that name."""
        if file is not None and file.filename:
            data = file.file.read(max_upload_bytes + 1)  # one byte past the limit tells "too large"
            return decode_upload(data, file.filename, max_upload_bytes, max_pixels), None
        if name:
            if picks is None:
                raise Refused(404, "no --images folder is served")
            return picks.image(name, max_pixels), name
        raise Refused(400, "give an image: upload a file, or name one of --images with image=")

    def render(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
        context.setdefault("error", None)
        return templates.TemplateResponse(request, template, {"has_capfilt": review is not None, **context},
                                          status_code=status)

    # -- Try a model ---------------------------------------------------------------------------------

    def try_page(request: Request, image: Image.Image | None, picked: str | None, question: str, texts: str,
                 gradcam_text: str, image_src: str | None, error: str | None = None, status: int = 200):
        inputs = {"question": question, "texts": texts, "gradcam_text": gradcam_text}
        results = None
        if image is not None:
            can = service.can
            caps = service.captions(image) if can["caption"] else {"beam": [], "nucleus": []}
            answer = service.answer(image, question) if can["answer"] and question.strip() else None
            targets = _split_texts(texts) or [c["caption"] for c in caps["beam"] + caps["nucleus"]]
            cam_text = gradcam_text.strip() or (caps["beam"][0]["caption"] if caps["beam"] else "")
            cam_src = None
            if can["gradcam"] and cam_text:
                if picked is not None:  # the browser fetches the overlay by URL; an upload's is inlined
                    cam_src = "/gradcam.png?" + urlencode({"image": picked, "text": cam_text})
                else:
                    cam_src = _data_uri(service.gradcam_png(image, cam_text))
            results = {**caps, "answer": answer, "match": service.match(image, targets) if can["match"] else [],
                       "gradcam_src": cam_src, "gradcam_text": cam_text}
        d = service.decoding
        return render(request, "try.html", status, title="Try a model", page="try", error=error,
                      model_name=service.name, holds=service.holds, can=service.can, notes=service.notes,
                      images=picks.list() if picks else [], picked=picked, image_src=image_src, inputs=inputs,
                      results=results, beams=d.num_beams, top_p=d.top_p, max_upload_mb=max_mb)

    @app.get("/", include_in_schema=False)
    def index() -> RedirectResponse:
        return RedirectResponse("/try")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True, "model": service.name, "holds": service.holds, "can": service.can,
                "images": picks is not None, "capfilt": review is not None}

    @app.get("/try", response_class=HTMLResponse)
    def try_get(request: Request, image: str | None = None, question: str = "", texts: str = "",
                gradcam_text: str = "") -> HTMLResponse:
        if image is None:
            return try_page(request, None, None, question, texts, gradcam_text, None)
        try:
            img, name = the_image(None, image)
        except Refused as e:
            return try_page(request, None, None, question, texts, gradcam_text, None, e.detail, e.status)
        return try_page(request, img, name, question, texts, gradcam_text,
                        "/images/file?" + urlencode({"name": name}))

    @app.post("/try", response_class=HTMLResponse)
    def try_post(request: Request, file: Annotated[UploadFile | None, File()] = None,
                 question: Annotated[str, Form()] = "", texts: Annotated[str, Form()] = "",
                 gradcam_text: Annotated[str, Form()] = "") -> HTMLResponse:
        try:
            img, _ = the_image(file, None)
        except Refused as e:
            return try_page(request, None, None, question, texts, gradcam_text, None, e.detail, e.status)
        shown = img.resize(display_size(img.size), Image.Resampling.NEAREST)
        return try_page(request, img, None, question, texts, gradcam_text, _data_uri(png_bytes(shown)))

    @app.get("/images/file")
    def picked_file(name: str) -> FileResponse:
        if picks is None:
            raise Refused(404, "no --images folder is served")
        return FileResponse(picks.path(name))

    @app.get("/api/images")
    def api_images() -> dict:
        return {"images": picks.list() if picks else []}

    @app.get("/gradcam.png")
    def gradcam_get(image: str, text: str) -> Response:
        img, _ = the_image(None, image)
        return Response(service.gradcam_png(img, text), media_type="image/png")

    @app.post("/api/gradcam")
    def api_gradcam(text: Annotated[str, Form()], file: Annotated[UploadFile | None, File()] = None,
                    image: Annotated[str | None, Form()] = None) -> Response:
        img, _ = the_image(file, image)
        return Response(service.gradcam_png(img, text), media_type="image/png")

    @app.post("/api/caption")
    def api_caption(file: Annotated[UploadFile | None, File()] = None,
                    image: Annotated[str | None, Form()] = None) -> dict:
        img, _ = the_image(file, image)
        return service.captions(img)

    @app.post("/api/answer")
    def api_answer(question: Annotated[str, Form(min_length=1)], file: Annotated[UploadFile | None, File()] = None,
                   image: Annotated[str | None, Form()] = None) -> dict:
        img, _ = the_image(file, image)
        return service.answer(img, question)

    @app.post("/api/match")
    def api_match(texts: Annotated[str, Form(min_length=1)], file: Annotated[UploadFile | None, File()] = None,
                  image: Annotated[str | None, Form()] = None) -> dict:
        img, _ = the_image(file, image)
        lines = _split_texts(texts)
        if not lines:
            raise Refused(400, "texts: give at least one text (one a line)")
        return {"match": service.match(img, lines)}

    # -- Review CapFilt ------------------------------------------------------------------------------

    def the_review() -> CapfiltFolder:
        if review is None:
            raise Refused(404, "no --capfilt folder is served")
        return review

    @app.get("/review", response_class=HTMLResponse)
    def review_page(request: Request, decision: DecisionQ = "all", source: SourceQ = "all", min_score: ScoreQ = 0.0,
                    max_score: ScoreQ = 1.0, page: PageQ = 1) -> HTMLResponse:
        folder = the_review()
        q = {"decision": decision, "source": source, "min_score": min_score, "max_score": max_score}
        result = folder.query(decision, source, min_score, max_score, page)

        def page_url(n: int) -> str:
            return "/review?" + urlencode({**q, "page": n})

        return render(request, "review.html", title="Review CapFilt", page="review", folder=str(folder.out),
                      image_root=str(folder.image_root), threshold=folder.threshold, report=folder.report(),
                      has_histogram=folder.histogram() is not None, q=q, result=result, page_url=page_url,
                      skipped=folder.skipped())

    @app.get("/api/review")
    def api_review(decision: DecisionQ = "all", source: SourceQ = "all", min_score: ScoreQ = 0.0,
                   max_score: ScoreQ = 1.0, page: PageQ = 1) -> dict:
        folder = the_review()
        r = folder.query(decision, source, min_score, max_score, page)
        return {"total_images": r.total_images, "total_captions": r.total_captions, "page": r.page,
                "pages": r.pages, "threshold": folder.threshold, "report": folder.report(),
                "images": [{"image": img.image, "image_id": img.image_id,
                            "captions": [{**c, "matches": f} for c, f in zip(img.captions, flags)]}
                           for img, flags in r.images]}

    @app.get("/review/image")
    def review_image(name: str) -> FileResponse:
        the_review()
        return FileResponse(review_files.path(name))  # type: ignore[union-attr]

    @app.get("/review/scores.png")
    def review_histogram() -> FileResponse:
        path = the_review().histogram()
        if path is None:
            raise Refused(404, "the CapFilt folder has no scores.png yet (the run has not been merged)")
        return FileResponse(path, media_type="image/png")

    return app
