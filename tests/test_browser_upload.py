"""The "Try an image" page in a real headless Chromium: real files, good and bad, uploaded through its
file uploader; each good one shows the prediction the run's model gives, each bad one one clear message.

The store is a generated run with a checkpoint of the same classes (random weights: what is checked is that
the page shows what the model says, computed here with ``core.inference.Predictor`` on the same bytes).
Skipped as ``tests/test_browser.py`` is when Playwright or Chromium is missing.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import update

from db import queries, store
from db.builder_embed import add_embedding
from db.models import Run
from tests.storefactory import build_store
from tests.test_browser import CHROMIUM, REPO, _free_port, _need, _save_screenshot, _wait_healthy, browser  # noqa: F401

pytestmark = pytest.mark.browser
LIMIT_MB = 2  # the server's upload limit in this test, so that an over-size file stays small
DONE = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _photo(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BILINEAR)


def write_files(folder: Path) -> tuple[list[Path], dict[str, str]]:
    """Good files (RGB, CMYK, grayscale, RGBA, a 10,000 px photo) and bad ones with the message each should get."""
    folder.mkdir(parents=True, exist_ok=True)
    good = {
        "photo.jpg": _jpeg(_photo(320, 240, 1), quality=90),
        "cmyk.jpg": _jpeg(_photo(200, 150, 2).convert("CMYK")),
        "gray.jpg": _jpeg(_photo(200, 200, 3).convert("L")),
        "alpha.png": _png(_photo(120, 160, 4).convert("RGBA")),
        "huge.jpg": _jpeg(Image.new("RGB", (10_000, 10_000), (40, 120, 200)), quality=70),
    }
    whole = _jpeg(_photo(400, 300, 5), quality=95)
    bad = {
        "notes.jpg": (b"a text file with a photo's name\n" * 40, "notes.jpg: not an image PIL can read"),
        "cut.jpg": (whole[: len(whole) // 2], "cut.jpg: cannot decode image"),
        "empty.jpg": (b"", "empty.jpg: empty file (0 bytes)"),
        "bomb.png": (_png(Image.new("1", (20_000, 20_000))), "bomb.png: image too large to decode safely"),
    }
    for name, data in {**good, **{k: v for k, (v, _) in bad.items()}}.items():
        (folder / name).write_bytes(data)
    assert len(good["huge.jpg"]) < LIMIT_MB * 1_000_000
    return [folder / n for n in good], {n: msg for n, (_, msg) in bad.items()}


@pytest.fixture(scope="module")
def tried(tmp_path_factory):
    """A store whose run has a checkpoint, and a server on it with a small upload limit."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _need(False, "the playwright package is not installed")
    _need(CHROMIUM.exists(), f"{CHROMIUM} not found (install Debian's chromium)")
    import torch

    from core.model import ModelMeta, SportsVGG, save_checkpoint

    tmp = tmp_path_factory.mktemp("upload")
    url, run_id, _ = build_store(tmp, n_classes=5, n_per_class=2, image_size=64, seed=5)
    add_embedding(url, run_id, map_=False)  # stored vectors: each tried image's nearest images
    with store.make_sessionmaker(store.make_engine(url, create=False))() as s:
        classes = queries.class_names(s, run_id)
    torch.manual_seed(0)
    ckpt = tmp / "ck" / "best.pt"
    meta = ModelMeta(class_names=classes, image_size=64, cam_layer="features.26")
    save_checkpoint(ckpt, {"model": SportsVGG(len(classes)).state_dict(), "meta": meta.to_dict()})
    with store.make_sessionmaker(store.make_engine(url, create=False)).begin() as s:
        s.execute(update(Run).where(Run.id == run_id).values(checkpoint_path=str(ckpt), cam_layer="features.26"))
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    log = tmp / "streamlit.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "dashboard/Home.py", "--server.port", str(port),
             "--server.headless", "true", "--browser.gatherUsageStats", "false",
             "--server.maxUploadSize", str(LIMIT_MB), "--", "--db", url],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            _wait_healthy(port, proc)
        except RuntimeError as exc:
            pytest.fail(f"{exc}\n{log.read_text(errors='replace')[-3000:]}")
        yield f"http://localhost:{port}", ckpt, tmp
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def expected_top1(ckpt: Path, files: list[Path]) -> dict[str, tuple[str, float]]:
    """What the run's model says of each file, computed here as the page computes it."""
    from core.inference import Predictor
    from core.tryout import decode_image

    predictor = Predictor(ckpt)
    images = [decode_image(p.read_bytes(), p.name, LIMIT_MB * 1_000_000, predictor.image_size) for p in files]
    results = predictor.predict(images, [p.name for p in files], methods=["gradcam"])
    return {r.name: (predictor.classes[r.top_idx[0]], r.top_prob[0]) for r in results}


def texts(page, testid: str) -> list[str]:
    return page.locator(f'[data-testid="{testid}"]').all_inner_texts()


def test_uploads_good_and_bad_files(tried, browser):  # noqa: F811
    server, ckpt, tmp = tried
    good, bad = write_files(tmp / "files")
    over = tmp / "files" / "over.jpg"
    over.write_bytes(b"\xff\xd8\xff" + bytes(np.random.default_rng(0).integers(0, 255, 2_500_000, dtype=np.uint8)))
    expected = expected_top1(ckpt, good)
    data_root_before = sorted(p.name for p in (tmp / "data").rglob("*"))
    page = browser.new_page(viewport={"width": 1500, "height": 1400})
    try:
        page.goto(f"{server}/try_image", wait_until="domcontentloaded")
        page.get_by_role("heading", name="Try an image").first.wait_for(timeout=60_000)
        page.locator(DONE).wait_for(timeout=60_000)
        assert f"up to {LIMIT_MB} MB per file" in page.inner_text("body")
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
            [*good, *(tmp / "files" / n for n in bad), over])
        # The browser refuses the over-size file itself, with its limit.
        page.get_by_text(f"File must be {LIMIT_MB}.0MB or smaller.").first.wait_for(timeout=60_000)
        for name in expected:
            page.get_by_text(name, exact=False).first.wait_for(timeout=60_000)
        page.wait_for_function(
            "(n) => [...document.querySelectorAll('[data-testid=\"stMarkdownContainer\"]')]"
            ".filter(e => e.innerText.includes(' · top-1 ')).length >= n", arg=len(good), timeout=180_000)
        page.locator(DONE).wait_for(timeout=180_000)
        errors = texts(page, "stAlertContentError")
        for name, message in bad.items():
            assert sum(e.startswith(message) for e in errors) == 1, (name, errors)
        assert len(errors) == len(bad), errors
        heads = [t for t in texts(page, "stMarkdownContainer") if " · top-1 " in t]
        for name, (cls, prob) in expected.items():
            assert f"{name} · top-1 {cls} at {prob:.1%}" in heads, (name, heads)
        # Each good image with its five nearest stored images.
        near = [t for t in texts(page, "stCaptionContainer") if "similarity " in t]
        assert len(near) == 5 * len(good), near
        assert page.locator('[data-testid="stException"]').count() == 0
        # The page keeps working: collect a result into the download.
        page.get_by_role("button", name="Add to download").first.click()
        page.locator(DONE).wait_for(timeout=120_000)
        page.get_by_text("Download 1 result").first.wait_for(timeout=60_000)
        assert page.locator('[data-testid="stException"]').count() == 0
        # The main area scrolls inside the window: grow the window to it so the screenshot holds the whole page.
        height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
        page.set_viewport_size({"width": 1500, "height": min(int(height) + 80, 6000)})
        page.wait_for_timeout(1500)
        _save_screenshot(page, "try_image_upload")
    finally:
        page.close()
    assert sorted(p.name for p in (tmp / "data").rglob("*")) == data_root_before
    assert not list(REPO.glob("*.jpg")) and not list(REPO.glob("*.png"))
