"""The viewer in a real browser: Debian's chromium (headless) against the real app server.

Starts the app (`web.app.create_app`: tile routes + viewer assets + the chat UI, the tiny
model) on a free local port with a small synthetic slide opened at start, waits until
OpenSeadragon has drawn it, checks the readouts, drives the overlay API (every layer, a
zoom-to from Python) and saves artifacts/viewer.png; a file that is not a slide is refused
with a sentence and the open slide stays. What the chat drives (upload, regions of an answer,
layer toggles, click-to-zoom) is in tests/test_chat_browser.py. Skips with the reason when
chromium or OpenSeadragon is absent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.live_server import (
    SLIDE_LOADED,
    headless_chromium,
    require_viewer_assets,
    serving_app,
    wait_for,
)
from web.viewer_component import mask_item, rect_item, viewer_state

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real app with a slide opened at start (as --slide does)."""
    require_viewer_assets()
    from omnipath.synth import write_synthetic_slide

    folder = tmp_path_factory.mktemp("browser")
    slide = write_synthetic_slide(folder / "slide.tiff", 3000, 2000, seed=3)
    with serving_app(folder, slide=slide.path) as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with headless_chromium(1280, 900) as driver:
        yield driver


VIEW_BOUNDS = (  # the settled view in level-0 pixels [x, y, w, h], null while animating
    "const v = window.omnipathViewer.viewer;"
    "if (v.viewport.getZoom(true) !== v.viewport.getZoom(false)) return null;"
    "const b = v.world.getItemAt(0).viewportToImageRectangle(v.viewport.getBounds(true));"
    "return [b.x, b.y, b.width, b.height];"
)


def test_viewer_draws_the_slide_readouts_and_every_overlay_layer(server_url: str, browser) -> None:
    driver = browser
    driver.get(server_url)
    banner = wait_for(
        driver,
        "const b = document.querySelector('#omnipath-model-banner'); return b && b.innerText;",
    )
    assert "tiny" in banner and "not connected" not in driver.find_element("tag name", "body").text

    # OpenSeadragon opened the DZI and drew every tile it wanted for the first view.
    wait_for(driver, SLIDE_LOADED)
    # The canvas holds slide pixels (tissue colours vary; an empty canvas would be uniform).
    spread = driver.execute_script(
        "const canvas = window.omnipathViewer.viewer.drawer.canvas;"
        "const ctx = canvas.getContext('2d');"
        "const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;"
        "let min = 255, max = 0;"
        "for (let i = 0; i < data.length; i += 4 * 97) { min = Math.min(min, data[i + 1]); max = Math.max(max, data[i + 1]); }"
        "return max - min;"
    )
    assert spread > 40

    # Readouts from the slide's microns per pixel (synthetic slides: 0.25 µm/px, 40×).
    readouts = driver.execute_script(
        "return [document.querySelector('.ov-magnification').textContent,"
        " document.querySelector('.ov-scalebar-label').textContent];"
    )
    assert readouts[0].endswith("×") and any(unit in readouts[1] for unit in ("µm", "mm"))

    bitmap = np.zeros((40, 60), dtype=bool)
    bitmap[8:32, 10:50] = True
    layers = {
        "regions": [rect_item({"x": 300, "y": 300, "w": 500, "h": 400}, "region 1"),
                    rect_item({"x": 1900, "y": 1100, "w": 400, "h": 400}, "region 2")],
        "boxes": [rect_item({"x": 1200, "y": 500, "w": 600, "h": 500}, "box")],
        "masks": [mask_item(bitmap, {"x": 700, "y": 1200, "w": 900, "h": 600}, "mask")],
    }  # fmt: skip
    driver.execute_script(f"window.omnipathViewer.setLayers({json.dumps(layers)});")
    counts = driver.execute_script(
        "return ['regions', 'boxes', 'masks'].map(n => document.querySelectorAll('.ov-overlay-' + n).length);"
    )
    assert counts == [2, 1, 1]
    assert (
        wait_for(
            driver,
            "const img = document.querySelector('.ov-mask-image'); return img && img.complete && img.naturalWidth;",
        )
        == 60
    )
    badges = driver.execute_script(
        "return [...document.querySelectorAll('.ov-overlay-regions .ov-badge')].map(b => b.textContent);"
    )
    assert badges == ["1", "2"]

    # What a Python event sends (viewer_state): new overlays and a rectangle to zoom to.
    state = viewer_state(
        None,
        layers={"boxes": [rect_item({"x": 1200, "y": 500, "w": 400, "h": 300})]},
        zoom_to={"x": 1200, "y": 500, "w": 400, "h": 300},
    )
    driver.execute_script("window.omnipathViewer.applyState(arguments[0]);", state)
    assert driver.execute_script("return document.querySelectorAll('.ov-overlay').length;") == 1
    x, y, w, h = wait_for(driver, VIEW_BOUNDS)
    assert x <= 1200 and y <= 500 and x + w >= 1600 and y + h >= 800 and w < 1500

    # Back to the whole slide for the screenshot, with the cursor read-out exercised.
    driver.execute_script(f"window.omnipathViewer.setLayers({json.dumps(layers)});")
    driver.execute_script("window.omnipathViewer.viewer.viewport.goHome(true);")
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_element("css selector", ".ov-canvas")
    ActionChains(driver).move_to_element_with_offset(canvas, 10, 10).perform()
    assert "µm" in wait_for(driver, "return document.querySelector('.ov-cursor').textContent;")
    wait_for(driver, "return window.omnipathViewer.viewer.world.getItemAt(0).getFullyLoaded();")
    artifacts = REPO / "artifacts"
    artifacts.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(artifacts / "viewer.png"))


def test_a_file_that_is_not_a_slide_is_refused_with_a_sentence_and_the_slide_stays(
    server_url: str, browser, tmp_path: Path
) -> None:
    from omnipath.errors import SlideError
    from omnipath.slide import open_slide

    driver = browser
    driver.get(server_url)
    opened = wait_for(
        driver, "const v = window.omnipathViewer; return v && v.instance && v.instance.dziUrl;"
    )
    wait_for(driver, SLIDE_LOADED)
    not_a_slide = tmp_path / "notes.svs"
    not_a_slide.write_text("these are notes, not a slide")
    with pytest.raises(SlideError) as refused:
        open_slide(not_a_slide)
    driver.find_element("css selector", "#omnipath-upload input[type=file]").send_keys(
        str(not_a_slide)
    )
    toast = wait_for(
        driver, "const t = document.querySelector('.toast-body'); return t && t.innerText;"
    )
    assert refused.value.message in toast and "Traceback" not in toast
    assert driver.execute_script("return window.omnipathViewer.instance.dziUrl;") == opened
