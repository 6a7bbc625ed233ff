"""The real app server on a free local port, and a headless Debian chromium to drive it.

Shared by the tests that talk to a running server (tests/test_chat_browser.py,
tests/test_viewer_browser.py, tests/test_e2e_app.py, tests/test_tiles_routes.py):

    require_viewer_assets()                      # skip when OpenSeadragon is not installed
    with serving_app(tmp_folder, slide=path) as (url, services): ...
    with headless_chromium(1280, 900) as driver: wait_for(driver, SLIDE_LOADED)
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

HOST = "127.0.0.1"

# Script for wait_for: true once OpenSeadragon has drawn every tile of the current view.
SLIDE_LOADED = (
    "const v = window.omnipathViewer && window.omnipathViewer.viewer;"
    "const item = v && v.world.getItemAt(0); return !!item && item.getFullyLoaded();"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def require_viewer_assets() -> None:
    """Skip the calling test when the viewer's OpenSeadragon build is absent."""
    from web.viewer_component import OSD_BUILD_DIR

    if not (OSD_BUILD_DIR / "openseadragon.min.js").is_file():
        pytest.skip("OpenSeadragon is not installed (run `npm ci` in web/viewer)")


@contextmanager
def running_server(app: Any, port: int, *, start_timeout_s: float = 60) -> Iterator[str]:
    """uvicorn serving the ASGI `app` on 127.0.0.1:`port` in a daemon thread; yields the
    base URL ("http://127.0.0.1:PORT/") once it accepts connections, stops it on exit."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(
            app, host=HOST, port=port, log_level="warning",
            # gradio_client and the browser keep an event stream open: do not wait on it
            timeout_graceful_shutdown=2,
        )
    )  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout_s
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                pytest.fail("the app server did not start")
            time.sleep(0.05)
        yield f"http://{HOST}:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def serving_app(folder: Path, **settings: Any) -> Iterator[tuple[str, Any]]:
    """The whole app (`web.app.create_app`, the tiny model) on a free port, its data under
    `folder`/data and its log in `folder`/log.db, no sample slide; `settings` are further
    WebConfig fields (slide=... opens a slide at start). Yields (base URL, the app's
    ChatServices); closes its slide registry and log on exit."""
    from storage import Store
    from web.app import create_app
    from web.chat_services import build_chat_services
    from web.config import WebConfig

    settings.setdefault("model", "tiny")
    config = WebConfig(port=free_port(), data_dir=folder / "data", sample_slide=False, **settings)
    app = create_app(config, build_chat_services(config, store=Store(folder / "log.db")))
    chat = app.state.chat_services
    try:
        with running_server(app, config.port) as url:
            yield url, chat
    finally:
        chat.web.registry.close()
        chat.store.close()


@contextmanager
def headless_chromium(width: int, height: int) -> Iterator[Any]:
    """A selenium WebDriver on Debian's headless chromium with a throwaway profile and a
    width×height window; skips the calling test when chromium or its driver is absent."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed "
            "(apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="omnipath-chromium-")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(options=options, service=Service(chromedriver))
        try:
            driver.set_script_timeout(30)
            yield driver
        finally:
            driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: Any, script: str, timeout_s: float = 60) -> Any:
    """Run the JavaScript `script` (it must `return`) every 0.25 s until it returns something
    truthy; returns that value, or fails the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for: {script}")
