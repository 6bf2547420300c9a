"""Every dashboard page in a real headless Chromium: it loads, shows its heading and no exception.

Screenshots go to ``tests/artifacts/screenshots/`` and, when ``SPORTS_SCREENSHOTS_DIR`` is set, there too.
Skipped when Playwright or Chromium is missing, except under CI (``CI=true``), where that is a failure.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from db.builder import add_hashes
from db.builder_embed import add_embedding
from db.builder_calibration import add_calibration, add_logits
from db.builder_pairs import add_compared_run
from tests.storefactory import build_store

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "tests" / "artifacts" / "screenshots"
PAGES = [
    ("", "Overview", "overview"),
    ("confusion", "Confusion matrix", "confusion"),
    ("per_class", "Per-class accuracy", "per_class"),
    ("gallery", "Misclassifications", "gallery"),
    ("compare", "Heatmap comparison", "compare"),
    ("data_issues", "Data issues", "data_issues"),
    ("export", "Export", "export"),
    ("trust", "Can the maps be trusted?", "trust"),
    ("calibration", "Calibration", "calibration"),
    ("review_queue", "Review queue", "review_queue"),
    ("map", "Map", "map"),
    ("try_image", "Try an image", "try_image"),
    ("compare_runs", "Compare runs", "compare_runs"),
]

pytestmark = pytest.mark.browser


def _need(ok: bool, reason: str) -> None:
    if ok:
        return
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"browser test cannot run under CI: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"streamlit did not answer on port {port} within {timeout:.0f} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _need(False, "the playwright package is not installed")
    _need(CHROMIUM.exists(), f"{CHROMIUM} not found (install Debian's chromium)")
    url, run_id, _ = build_store(tmp_path_factory.mktemp("browser"), n_classes=100, n_per_class=3, image_size=96,
                                 seed=3, audit=True, trust=True)
    add_logits(url, run_id)  # logits and a temperature for the Calibration page and its switch
    add_calibration(url, run_id)
    add_hashes(url, run_id)  # file hashes, so that the Review queue can take verdicts
    add_embedding(url, run_id)  # feature vectors and a map, for the Map page and "It looks like these"
    add_compared_run(url, run_id, stage="phase1", lose=0.3, gain=0.1, moved=0.2)  # a snapshot for Compare runs
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    log = tmp_path_factory.mktemp("log") / "streamlit.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "dashboard/Home.py", "--server.port", str(port),
             "--server.headless", "true", "--browser.gatherUsageStats", "false", "--", "--db", url],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        try:
            _wait_healthy(port, proc)
        except RuntimeError as exc:
            pytest.fail(f"{exc}\n{log.read_text(errors='replace')[-3000:]}")
        yield f"http://localhost:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--no-first-run", "--disable-dev-shm-usage"],
        )
        try:
            yield b
        finally:
            b.close()


@pytest.mark.parametrize("path,heading,shot", PAGES, ids=[p[2] for p in PAGES])
def test_page_in_browser(server, browser, path, heading, shot):
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    try:
        page.goto(f"{server}/{path}", wait_until="domcontentloaded")
        page.get_by_role("heading", name=heading).first.wait_for(timeout=60_000)
        # The script has finished when the app root says so; charts and images paint just after.
        page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(timeout=60_000)
        page.wait_for_timeout(1000)
        # The main area scrolls inside the window: grow the window to it so the screenshot holds the whole page.
        height = page.evaluate(
            "() => Math.max(...[...document.querySelectorAll('[data-testid=\"stMain\"], [data-testid=\"stMainBlockContainer\"]')]"
            ".map(e => e.scrollHeight), 800)"
        )
        page.set_viewport_size({"width": 1500, "height": min(int(height) + 80, 6000)})
        page.wait_for_timeout(1500)
        assert page.locator('[data-testid="stException"]').count() == 0
        _save_screenshot(page, shot)
    finally:
        page.close()


def _save_screenshot(page, shot: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target = ARTIFACTS / f"{shot}.png"
    page.screenshot(path=str(target), full_page=True)
    extra = os.environ.get("SPORTS_SCREENSHOTS_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        # A 256-colour copy keeps the documentation's pictures small.
        Image.open(target).convert("RGB").quantize(colors=256).save(Path(extra) / target.name, optimize=True)


def test_data_issues_suspects_tab_shows_maps(server, browser):
    page = browser.new_page(viewport={"width": 1500, "height": 1400})
    try:
        page.goto(f"{server}/data_issues", wait_until="domcontentloaded")
        page.get_by_role("heading", name="Data issues").first.wait_for(timeout=60_000)
        page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(timeout=60_000)
        page.get_by_role("tab", name="Suspect labels").click()
        panel = page.get_by_role("tabpanel").filter(has_text="given:")
        panel.locator("img").first.wait_for(timeout=30_000)
        page.wait_for_timeout(1000)
        # one page of suspects, each with its map, and the colour bar that keys them
        legend = panel.locator('[data-testid="stImage"]').filter(has_text="Heatmap colours").count()
        assert legend == 1 and panel.locator("img").count() == 10 + legend
        assert page.locator('[data-testid="stException"]').count() == 0
        _save_screenshot(page, "data_issues_suspects")
    finally:
        page.close()


def test_confusion_cell_click_shows_its_pair(server, browser):
    page = browser.new_page(viewport={"width": 1500, "height": 1400})
    done = '[data-testid="stApp"][data-test-script-state="notRunning"]'

    def pair_text() -> list[str]:
        return [t for t in page.locator('[data-testid="stMarkdownContainer"]').all_inner_texts() if "predicted as" in t]

    try:
        page.goto(f"{server}/confusion", wait_until="domcontentloaded")
        page.get_by_role("heading", name="Confusion matrix").first.wait_for(timeout=60_000)
        page.locator(done).wait_for(timeout=60_000)
        points = page.locator(".js-plotly-plot path.point")
        points.first.wait_for(state="attached", timeout=30_000)
        before = pair_text()
        points.nth(points.count() - 1).click(force=True)  # the last off-diagonal cell: not the default pair
        page.wait_for_function(
            "(b) => [...document.querySelectorAll('[data-testid=\"stMarkdownContainer\"]')]"
            ".map(e => e.innerText).filter(t => t.includes('predicted as')).join('|') !== b",
            arg="|".join(before), timeout=30_000,
        )
        page.locator(done).wait_for(timeout=60_000)
        assert page.locator('[data-testid="stException"]').count() == 0
        assert pair_text() and pair_text() != before
        assert "sport=" in page.url and "pred=" in page.url
    finally:
        page.close()
