"""The report in a real headless browser: Debian's chromium driven by Playwright (no browser
download). Skipped with a message when either is missing, unless JAXFACE_REQUIRE_BROWSER=1
(set by .ci/run, which installs both), where a missing browser fails instead.

Screenshots go to $JAXFACE_TEST_ARTIFACTS (default: report-artifacts under pytest's temporary
folder); the test prints where.
"""

from __future__ import annotations

import base64
import math
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from report_fixtures import QUAD_COLOR, make_output_folder

from jaxface.report import Row, render_page, write_report
from jaxface.report.assets import copy_static

CHROMIUM = os.environ.get("JAXFACE_CHROMIUM", "/usr/bin/chromium")
# Software WebGL (SwiftShader): the same pixels on every machine, no GPU needed.
ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
ROWS = 1000


def _unavailable() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    if not Path(CHROMIUM).is_file():
        return f"no browser at {CHROMIUM} (apt-get install chromium, or set JAXFACE_CHROMIUM)"
    return None


@pytest.fixture(scope="module")
def browser():
    why = _unavailable()
    if why:
        if os.environ.get("JAXFACE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser test required but {why}")
        pytest.skip(f"browser test skipped: {why}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    folder = Path(os.environ.get("JAXFACE_TEST_ARTIFACTS") or tmp_path_factory.getbasetemp() / "report-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_page(browser, url: str):
    """A page at `url` and the list its console errors and uncaught exceptions go to."""
    page = browser.new_page(viewport={"width": 1200, "height": 800}, device_scale_factor=1)
    errors = []
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    page.goto(url, wait_until="load")
    return page, errors


def pixels(page) -> np.ndarray:
    """The viewer's canvas read back with gl.readPixels: u8[H, W, 4]."""
    p = page.evaluate("jaxfaceReport.pixels()")
    return np.frombuffer(base64.b64decode(p["data"]), np.uint8).reshape(p["height"], p["width"], 4)


def show(page, name: str) -> None:
    page.click(f'button.view[data-name="{name}"]')
    page.wait_for_function("document.getElementById('viewer').dataset.state !== 'loading'", timeout=30_000)
    state = page.get_attribute("#viewer", "data-state")
    assert state == "ready", page.text_content("#viewer-status")


def test_page_rows_and_viewer_pixels(browser, artifacts, tmp_path, capsys):
    out = make_output_folder(tmp_path)
    write_report(out)
    page, errors = open_page(browser, (out / "index.html").as_uri())
    assert page.locator("#results tbody tr").count() == 3
    assert "failed at load" in page.text_content("#photo-broken")
    assert page.get_attribute("#viewer", "data-state") == "empty"

    show(page, "quad")
    cam = page.evaluate("jaxfaceReport.camera()")
    img = pixels(page)
    h, w = img.shape[:2]
    assert cam["aspect"] == 1 and h == w
    # Flat vertex colours pass through unchanged: the centre pixel is the quad's colour.
    want = np.rint(np.float64(QUAD_COLOR) * 255)
    np.testing.assert_allclose(img[h // 2, w // 2, :3], want, atol=1)
    # The 2x2 square, centred, seen from `distance` with a vertical field of view `fov`,
    # covers (1 / (distance tan(fov / 2)))^2 of the square canvas.
    covered = (np.abs(img[..., :3].astype(int) - want).max(-1) <= 1).mean()
    side = 1 / (cam["distance"] * math.tan(math.radians(cam["fov"]) / 2))
    assert cam["radius"] == pytest.approx(math.sqrt(2))
    assert covered == pytest.approx(side**2, abs=0.01) and covered > 0.3
    # Nine presses of the right arrow turn it by 90 degrees: edge-on, nearly nothing left.
    page.focus("#viewer-canvas canvas")
    for _ in range(9):
        page.keyboard.press("ArrowRight")
    edge_on = (np.abs(pixels(page)[..., :3].astype(int) - want).max(-1) <= 1).mean()
    assert edge_on < 0.01
    page.keyboard.press("0")
    assert (np.abs(pixels(page)[..., :3].astype(int) - want).max(-1) <= 1).mean() == pytest.approx(covered, abs=1e-3)

    # A 32,761-vertex mesh (the size of a BFM face): red rises from left to right.
    show(page, "grid")
    img = pixels(page)[..., :3].astype(float)
    face = np.abs(img[..., 1] - 128) <= 1  # green is 0.5 everywhere on the mesh
    assert face.mean() > 0.3
    cols = np.flatnonzero(face.any(axis=0))
    red = (img[..., 0] * face)[:, cols].sum(0) / face[:, cols].sum(0)  # mean red of each column
    assert red[5] < 20 and red[-6] > 235 and np.all(np.diff(red[5:-5]) >= -2)

    shot = artifacts / "report.png"
    page.screenshot(path=shot, full_page=True)
    assert errors == []
    with capsys.disabled():
        print(f"\nreport screenshot: {shot}")


def test_missing_mesh_file_is_reported_and_others_still_show(browser, tmp_path):
    out = make_output_folder(tmp_path)
    write_report(out)
    (out / "report" / "mesh" / "quad.js").unlink()
    page, errors = open_page(browser, (out / "index.html").as_uri())
    page.click('button.view[data-name="quad"]')
    page.wait_for_function("document.getElementById('viewer').dataset.state !== 'loading'")
    assert page.get_attribute("#viewer", "data-state") == "error"
    assert page.text_content("#viewer-status").startswith("Could not load the mesh of quad (report/mesh/quad.js)")
    show(page, "grid")
    assert errors == ["console.error: Failed to load resource: net::ERR_FILE_NOT_FOUND"]


def test_thousand_rows_load_lazily(browser, artifacts, tmp_path, capsys):
    thumbs = tmp_path / "report" / "thumbs"
    thumbs.mkdir(parents=True)
    src = min((Path(__file__).parent / "data" / "images").glob("*.jpg"))
    small = cv2.imencode(".jpg", cv2.resize(cv2.imread(str(src)), (80, 80)))[1].tobytes()
    rows = []
    for i in range(ROWS):
        for kind in ("in", "overlay"):
            (thumbs / f"p{i:04d}.{kind}.jpg").write_bytes(small)
        rows.append(Row(name=f"p{i:04d}", angles=(1.0, 2.0, 3.0), thumb=f"report/thumbs/p{i:04d}.in.jpg",
                        overlay_thumb=f"report/thumbs/p{i:04d}.overlay.jpg", links=(("mat", f"p{i:04d}.mat"),),
                        anchor=f"photo-p{i:04d}", mesh=f"report/mesh/p{i:04d}.js"))
    (tmp_path / "index.html").write_text(render_page(rows, {"model": "m", "method": "fit"}, "1,000 rows"))
    copy_static(tmp_path / "report")

    t0 = time.perf_counter()
    page, errors = open_page(browser, (tmp_path / "index.html").as_uri())
    wall = time.perf_counter() - t0
    nav = page.evaluate("(() => { const n = performance.getEntriesByType('navigation')[0];"
                        " return {dcl: n.domContentLoadedEventEnd, load: n.loadEventEnd}; })()")
    assert page.locator("#results tbody tr").count() == ROWS
    loaded = "document.querySelectorAll('img.thumb').length - " \
             "[...document.querySelectorAll('img.thumb')].filter(i => !i.complete).length"
    first = page.evaluate(loaded)
    # Lazy loading: the rows far below the screen have not fetched their thumbnails.
    assert 2 <= first < 2 * ROWS // 4
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_function("document.querySelector('#photo-p0999 img.thumb').complete "
                           "&& document.querySelector('#photo-p0999 img.thumb').naturalWidth === 80")
    page.screenshot(path=artifacts / "report-1000-rows.png")
    assert errors == []
    with capsys.disabled():
        print(f"\n1,000-row page: DOMContentLoaded {nav['dcl']:.0f} ms, load {nav['load']:.0f} ms, "
              f"goto() {wall * 1000:.0f} ms; {first} of {2 * ROWS} thumbnails fetched before scrolling")
    shutil.rmtree(thumbs)
