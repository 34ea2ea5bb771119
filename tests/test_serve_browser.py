"""The web page in a real browser (Debian's Chromium, headless, driven by Playwright): type a prompt, click
Generate, the image appears in the gallery with its parameters and a download link, and it is the Pipeline's
image; inpainting with the mask brush; and the page asks nothing of any other host."""

import base64
import io
import os
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image
from test_serve_support import LiveServer, make_app, pixels, shared_pipeline

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra) for the "
                                                            "browser test; its own browser download is not needed")

CHROMIUM = Path("/usr/bin/chromium")


def chromium() -> Path:
    """Debian's Chromium, installed with apt-get when missing (as root); a skip saying why when it cannot be."""
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("Chromium is not installed and cannot be here (needs apt-get as root): apt-get install chromium")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, check=True, capture_output=True,
                       timeout=900)
    except (subprocess.SubprocessError, OSError) as error:
        pytest.skip(f"Chromium is not installed and `apt-get install chromium` failed: {error}")
    if not CHROMIUM.exists():
        pytest.skip("apt-get installed chromium but /usr/bin/chromium is missing")
    return CHROMIUM


def until(page, function: str, timeout: float = 60.0) -> None:
    """Poll ``function`` in the page (page.wait_for_function evaluates strings, which the page's CSP forbids)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(function):
        assert time.monotonic() < deadline, f"timed out waiting for {function}"
        page.wait_for_timeout(50)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with LiveServer(make_app(outputs=tmp_path_factory.mktemp("outputs"))) as server:
        yield server


@pytest.fixture(scope="module")
def page(live):
    executable = chromium()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable), args=["--no-sandbox"], headless=True)
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        page.requests, page.problems = [], []
        page.on("request", lambda request: page.requests.append(request))
        page.on("console", lambda m: page.problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda error: page.problems.append(str(error)))
        page.goto(f"{live.url}/")
        until(page, "() => document.querySelector('#sampler').options.length > 0")
        yield page
        browser.close()


def shown(page, index: int = 0) -> Image.Image:
    """The gallery's image ``index`` (newest first), from its data: URL."""
    src = page.locator("#gallery figure img").nth(index).get_attribute("src")
    assert src.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))


def test_typing_a_prompt_and_clicking_generate_shows_the_image(page, live):
    empty = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    page.fill("#prompt", "a red circle on a white background")
    page.fill("#steps", "4")
    page.fill("#seed", "5")
    page.select_option("#sampler", "euler-a")
    page.click("#generate")
    page.wait_for_selector("#gallery figure img", timeout=120_000)
    until(page, "() => [...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth)")
    filled = Image.open(io.BytesIO(page.screenshot())).convert("RGB")

    expected = shared_pipeline().generate("a red circle on a white background", steps=4, seed=5,
                                          sampler="euler-a")[0].image
    assert np.array_equal(pixels(shown(page)), pixels(expected))  # the image the page got is the Pipeline's
    b = page.locator("#gallery figure img").first.bounding_box()
    region = (round(b["x"]) + 2, round(b["y"]) + 2, round(b["x"] + b["width"]) - 2, round(b["y"] + b["height"]) - 2)
    before, after = pixels(empty.crop(region)), pixels(filled.crop(region))
    drawn = pixels(expected.resize((round(b["width"]), round(b["height"])), Image.Resampling.NEAREST))[2:-2, 2:-2]
    assert before.std() < 1 and after.std() > 10  # the empty gallery there, then the image (a circle on white)
    assert np.abs(after - drawn).mean() < 3 < np.abs(before - drawn).mean()  # and the screenshot shows it
    card = page.locator("#gallery figure").first
    assert "Seed: 5" in card.locator("pre").inner_text() and "Sampler: Euler a" in card.locator("pre").inner_text()
    link = card.locator("a")
    assert link.get_attribute("download") == "latentdiff-5.png" and link.get_attribute("href").startswith("blob:")
    assert page.inner_text("#status") == "done: seed 5"  # no warning: the page sends only what is ours
    (saved,) = live.app.state.server.outputs.glob("*.png")  # the page asks for its images to be kept
    with Image.open(saved) as on_disk:
        assert np.array_equal(pixels(on_disk), pixels(expected))


def test_inpainting_with_the_mask_brush(page, tmp_path):
    start = Image.new("RGB", (64, 64), "white")
    start.save(tmp_path / "start.png")
    page.set_input_files("#upload", str(tmp_path / "start.png"))
    page.wait_for_selector("#canvas-box:not([hidden])")
    box = page.locator("#mask-canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    page.fill("#denoising_strength", "1")
    page.fill("#seed", "9")
    with page.expect_response("**/sdapi/v1/img2img", timeout=120_000) as answer:
        page.click("#generate")
    assert answer.value.status == 200
    sent = answer.value.request.post_data_json
    assert sent["mask"].startswith("data:image/png;base64,") and sent["init_images"][0].startswith("data:")
    until(page, "() => document.querySelectorAll('#gallery figure').length === 2")
    out = pixels(shown(page))
    assert np.abs(out[:8] - 255).max() == 0  # far from the stroke: the white input, composited back
    assert np.abs(out[28:36, 24:40] - 255).mean() > 1  # along the stroke: repainted


def test_the_page_asked_nothing_of_another_host(page, live):
    asked = [r.url for r in page.requests]
    assert any(u.endswith("/sdapi/v1/progress") for u in asked)  # it polled progress while generating
    here = urlparse(live.url).netloc
    for url in asked:
        parsed = urlparse(url)
        assert parsed.scheme in ("data", "blob") or parsed.netloc == here, url
    assert page.problems == []  # no script error, no blocked resource (the page's CSP allows only 'self')
