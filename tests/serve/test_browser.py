"""``blipx serve`` end to end: the real command in a subprocess on a free port, Debian's headless
Chromium loading its pages; the DOM must hold the image and its captions, and the screenshot
must show the image's pixels (a magenta no page element has)."""

from __future__ import annotations

import html
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests.serve.conftest import MAGENTA

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (.ci/run installs Debian's)")

WINDOW = (1280, 2000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(serve_tree):
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "blipx", "serve", "--model", str(serve_tree["model"]), "--device", "cpu",
           "--images", str(serve_tree["pick"]), "--capfilt", str(serve_tree["capfilt"]), "--port", str(port)]
    log = open(serve_tree["base"] / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"blipx serve exited with {proc.returncode}:\n"
                            + (serve_tree["base"] / "server.log").read_text()[-3000:])
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("blipx serve did not answer /healthz within 120 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def chromium(tmp_path, url: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
           *args, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def magenta_pixels(path) -> int:
    img = Image.open(path).convert("RGB")
    assert img.size == WINDOW
    diff = np.abs(np.asarray(img, dtype=np.int16) - np.array(MAGENTA, dtype=np.int16))
    return int((diff.max(axis=-1) <= 8).sum())


def test_try_page_renders_the_picked_image_its_captions_and_overlay(server, tmp_path):
    import httpx

    url = f"{server}/try?image=magenta.png&texts=a+magenta+square"
    dom = chromium(tmp_path, url, "--dump-dom").stdout
    assert '<img id="input-image" class="shown" src="/images/file?name=magenta.png"' in dom
    beam = httpx.post(f"{server}/api/caption", data={"image": "magenta.png"}, timeout=60).json()["beam"][0]
    assert html.escape(beam["caption"], quote=False) in dom  # beam search: the same caption again
    assert dom.count('<tr class="nucleus">') == 3 and '<img id="gradcam"' in dom
    assert "a magenta square" in dom
    shot = tmp_path / "try.png"
    chromium(tmp_path, url, f"--screenshot={shot}")
    # The input image is drawn 256 x 256 CSS pixels (device scale 1): at least that many magenta
    # pixels (the picker's 64 x 64 thumbnail and the overlay's coldest corner add a few more).
    assert magenta_pixels(shot) >= 0.9 * 256 * 256


def test_review_page_renders_the_images_and_their_captions(server, serve_tree, tmp_path):
    dom = chromium(tmp_path, f"{server}/review", "--dump-dom").stdout
    assert '<img src="/review/image?name=images/magenta.png"' in dom
    assert '<span class="caption">a magenta square</span>' in dom
    assert '<img id="histogram" src="/review/scores.png"' in dom
    assert dom.count('class="card"') == 5
    shot = tmp_path / "review.png"
    chromium(tmp_path, f"{server}/review?source=web", f"--screenshot={shot}")
    # Only the card of the magenta scene has magenta: its 96 x 96 thumbnail must be on screen.
    n = magenta_pixels(shot)
    assert 0.9 * 96 * 96 <= n <= 1.1 * 96 * 96
