"""``blipx serve``: a local web app to try a model and review a CapFilt folder (FastAPI).

Needs the ``serve`` extra (fastapi, uvicorn, python-multipart, jinja2)."""

from blipx.serve.app import Decoding, ModelService, create_app

__all__ = ["Decoding", "ModelService", "create_app"]
