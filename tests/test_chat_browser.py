"""The chat in a real browser: Debian's chromium (headless) against the real server.

Upload a generated slide through the page, draw a region on the viewer, ask, and check that
the answer streams into the chat and its overlays (PGDFC regions numbered by rank) appear on
the viewer, that a layer toggles and a click zooms. Saves artifacts/chat.png. Skips with the
reason when chromium or OpenSeadragon is absent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live_server import (
    SLIDE_LOADED,
    headless_chromium,
    require_viewer_assets,
    serving_app,
    wait_for,
)

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    require_viewer_assets()
    with serving_app(tmp_path_factory.mktemp("chat_browser")) as served:
        yield served


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with headless_chromium(1400, 950) as driver:
        yield driver


def test_upload_draw_a_region_ask_and_see_the_overlays(server, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    from omnipath.slide import content_hash
    from omnipath.synth import write_synthetic_slide

    url, services = server
    driver = browser
    driver.get(url)
    banner = wait_for(
        driver,
        "const b = document.querySelector('#omnipath-model-banner'); return b && b.innerText;",
    )
    assert "tiny" in banner and "Demonstration model" in banner

    slide = write_synthetic_slide(tmp_path / "case.tiff", 3000, 2000, seed=7).path
    driver.find_element("css selector", "#omnipath-upload input[type=file]").send_keys(str(slide))
    expected = f"/slides/{content_hash(slide)}.dzi"
    wait_for(driver, f"return window.omnipathViewer.instance.dziUrl === '{expected}';")
    wait_for(driver, SLIDE_LOADED)

    # "Ask about a region": drag a rectangle on the slide.
    driver.find_element("css selector", "#omnipath-region .oc-draw").click()
    canvas = driver.find_element("css selector", ".ov-canvas")
    size = canvas.size
    ActionChains(driver).move_to_element_with_offset(
        canvas, -size["width"] // 6, -size["height"] // 6
    ).click_and_hold().move_by_offset(60, 40).move_by_offset(60, 40).release().perform()
    label = wait_for(
        driver, "return document.querySelector('#omnipath-region .oc-region-label').textContent;"
    )
    assert "Next question is about the region" in label
    assert (
        driver.execute_script("return document.querySelectorAll('.oc-region-overlay').length") == 1
    )

    question = driver.find_element("css selector", "#omnipath-question textarea")
    question.send_keys("Where is the lesion?")
    driver.find_element("css selector", "#omnipath-ask").click()

    # The answer's layers reach the viewer: 8 regions (S = 8), numbered 1..8 by rank.
    wait_for(driver, "return document.querySelectorAll('.ov-overlay-regions').length === 8;", 120)
    badges = driver.execute_script(
        "return [...document.querySelectorAll('.ov-overlay-regions .ov-badge')].map(b => b.textContent);"
    )
    assert badges == [str(n) for n in range(1, 9)]
    assert (
        driver.execute_script(
            "return document.querySelector('.ov-toggle-regions .ov-count').textContent;"
        )
        == "8"
    )
    messages = wait_for(
        driver,
        'const m = document.querySelectorAll(\'#omnipath-chat .message-row, #omnipath-chat [data-testid="bot"], #omnipath-chat [data-testid="user"]\');'
        "return m.length >= 2 ? m.length : null;",
    )
    assert messages >= 2
    assert "about the region" in driver.find_element("css selector", "#omnipath-chat").text
    # the question was logged with its region; the region tool was reset for the next question
    conversation = services.store.list_conversations(limit=1)[0]
    turns = services.store.load_conversation(conversation["id"])["turns"]
    assert [t["role"] for t in turns] == ["user", "assistant"]
    assert turns[0]["meta"]["l0_region"] and len(turns[1]["regions"]) == 8
    wait_for(
        driver,
        "return document.querySelector('#omnipath-region .oc-region-label').textContent.startsWith('No region');",
    )

    # Like the answer: the feedback is logged on the answer's turn.
    like = wait_for(
        driver,
        "return [...document.querySelectorAll('#omnipath-chat button')]"
        ".find(b => (b.getAttribute('aria-label') || b.title || '') === 'Like');",
    )
    like.click()
    deadline = time.monotonic() + 30
    while not services.store.get_turn(turns[1]["id"])["feedback"]:
        assert time.monotonic() < deadline, "the like was not logged"
        time.sleep(0.25)
    assert services.store.get_turn(turns[1]["id"])["liked"] == "like"

    # A layer toggles; a click on a region zooms the viewer to it.
    driver.find_element("css selector", ".ov-toggle-regions input").click()
    assert driver.execute_script(
        "return [...document.querySelectorAll('.ov-overlay-regions')].every(n => getComputedStyle(n).display === 'none');"
    )
    driver.find_element("css selector", ".ov-toggle-regions input").click()
    zoom_before = driver.execute_script(
        "return window.omnipathViewer.viewer.viewport.getZoom(true);"
    )
    first = driver.find_elements("css selector", ".ov-overlay-regions")[0]
    ActionChains(driver).move_to_element(first).click().perform()
    wait_for(
        driver,
        f"const v = window.omnipathViewer.viewer; return v.viewport.getZoom(true) > {zoom_before} * 1.5"
        " && v.viewport.getZoom(true) === v.viewport.getZoom(false);",
    )

    driver.execute_script("window.omnipathViewer.viewer.viewport.goHome(true);")
    wait_for(driver, SLIDE_LOADED)
    artifacts = REPO / "artifacts"
    artifacts.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(artifacts / "chat.png"))


@pytest.fixture(scope="module")
def server_with_slide(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    """A server that opens a slide at start (as --slide or the sample slide do)."""
    require_viewer_assets()
    from omnipath.synth import write_synthetic_slide

    folder = tmp_path_factory.mktemp("chat_browser_start")
    first = write_synthetic_slide(folder / "first.tiff", 2400, 1600, seed=8).path
    with serving_app(folder, slide=first) as served:
        yield served


def _ask_in_page(driver, services, text: str, turns: int) -> None:
    """Ask through the page; return once the answer is complete in the log (`turns` turns in
    the newest conversation, the last one done) and its 8 regions are on the viewer."""
    question = driver.find_element("css selector", "#omnipath-question textarea")
    question.clear()
    question.send_keys(text)
    driver.find_element("css selector", "#omnipath-ask").click()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        newest = services.store.list_conversations(limit=1)
        if newest and newest[0]["turn_count"] == turns:
            last = services.store.load_conversation(newest[0]["id"])["turns"][-1]
            if last["status"] == "done":  # logged when it starts, completed at the end
                break
        time.sleep(0.25)
    else:
        raise AssertionError(f"the answer to {text!r} was not logged")
    wait_for(driver, "return document.querySelectorAll('.ov-overlay-regions').length === 8;")


def _chat_text(driver) -> str:
    return driver.find_element("css selector", "#omnipath-chat").text


@pytest.mark.slow
def test_an_interrupted_answer_reads_so_and_retry_answers_again(
    browser, tmp_path, tiny_engine
) -> None:
    """A log left by a server killed mid-answer; the next server marks the answer interrupted,
    the page says so, and Retry replaces it."""
    require_viewer_assets()
    from omnipath.synth import write_synthetic_slide
    from storage import Store
    from web.chat_services import build_chat_services
    from web.config import WebConfig
    from web.upload import upload_slide

    folder = tmp_path / "server"
    slide = write_synthetic_slide(tmp_path / "case.tiff", 2400, 1600, seed=4).path
    config = WebConfig(data_dir=folder / "data", sample_slide=False)
    with Store(folder / "log.db") as store:
        before = build_chat_services(config, engine=tiny_engine, store=store)
        conversation_id = upload_slide(before, slide)["conversation_id"]
        cut = store.begin_answer(conversation_id, "Where is the lesion?", pgdfc_mode="attention")
        store.save_answer_text(cut, "The lesion lies")
        before.web.registry.close()

    with serving_app(folder) as (url, services):
        driver = browser
        driver.get(url)
        wait_for(
            driver,
            "return [...document.querySelectorAll('button')]"
            ".find(b => b.textContent.includes('Conversations'));",
        ).click()
        wait_for(driver, "return document.querySelector('#omnipath-conversations input');").click()
        wait_for(
            driver,
            "return [...document.querySelectorAll('#omnipath-conversations li, ul.options li')]"
            ".find(li => li.textContent.includes('Where is the lesion?'));",
        ).click()
        wait_for(
            driver,
            "return document.querySelector('#omnipath-chat').innerText"
            ".includes('interrupted (the server stopped while answering); press Retry');",
        )
        assert "The lesion lies" in _chat_text(driver)

        driver.find_element("css selector", "#omnipath-retry").click()
        wait_for(
            driver, "return document.querySelectorAll('.ov-overlay-regions').length === 8;", 120
        )
        turns = services.store.load_conversation(conversation_id)["turns"]
        assert [(t["role"], t["status"]) for t in turns] == [
            ("user", "done"),
            ("assistant", "done"),
        ]
        assert turns[1]["id"] != cut
        wait_for(
            driver,
            "return !document.querySelector('#omnipath-chat').innerText.includes('interrupted');",
        )
        assert "Where is the lesion?" in _chat_text(driver)


def test_start_slide_undo_new_slide_and_reopen(server_with_slide, browser, tmp_path) -> None:
    from selenium.webdriver.common.by import By

    from omnipath.synth import write_synthetic_slide

    url, services = server_with_slide
    driver = browser
    driver.get(url)
    first_url = wait_for(
        driver, "const v = window.omnipathViewer; return v && v.instance && v.instance.dziUrl;"
    )
    wait_for(driver, SLIDE_LOADED)

    # Ask about the slide opened at start: no upload needed. HTML in a question is shown as text.
    _ask_in_page(driver, services, 'Where is the lesion? <img src="/probe.png">', 2)
    chat_text = driver.find_element("css selector", "#omnipath-chat").text
    assert '<img src="/probe.png">' in chat_text
    assert not driver.find_elements("css selector", "#omnipath-chat img[src*=probe]")
    _ask_in_page(driver, services, "And the grade?", 4)
    wait_for(
        driver,
        "return document.querySelector('#omnipath-chat').innerText.includes('And the grade?');",
    )
    first_conversation = services.store.list_conversations(limit=1)[0]["id"]
    assert len(services.store.load_conversation(first_conversation)["turns"]) == 4

    # Undo: the last exchange goes, its question returns to the box.
    driver.find_element("css selector", "#omnipath-undo").click()
    wait_for(
        driver,
        "return document.querySelector('#omnipath-question textarea').value === 'And the grade?';",
    )
    assert len(services.store.load_conversation(first_conversation)["turns"]) == 2
    assert "And the grade?" not in driver.find_element("css selector", "#omnipath-chat").text

    # A new slide: a new conversation, the chat starts empty, no overlays.
    second = write_synthetic_slide(tmp_path / "second.tiff", 1800, 1200, seed=9).path
    driver.find_element("css selector", "#omnipath-upload input[type=file]").send_keys(str(second))
    wait_for(driver, f"return window.omnipathViewer.instance.dziUrl !== '{first_url}';")
    wait_for(driver, SLIDE_LOADED)
    wait_for(driver, "return document.querySelectorAll('.ov-overlay-regions').length === 0;")
    assert "Where is the lesion?" not in driver.find_element("css selector", "#omnipath-chat").text

    # Reopen the first conversation from the list: its slide, turns and overlays come back.
    driver.find_element(By.XPATH, "//button[contains(., 'Conversations')]").click()
    dropdown = wait_for(driver, "return document.querySelector('#omnipath-conversations input');")
    dropdown.click()
    option = wait_for(
        driver,
        "return [...document.querySelectorAll('#omnipath-conversations li, ul.options li')]"
        ".find(li => li.textContent.includes('Where is the lesion?'));",
    )
    option.click()
    wait_for(driver, f"return window.omnipathViewer.instance.dziUrl === '{first_url}';")
    wait_for(driver, "return document.querySelectorAll('.ov-overlay-regions').length === 8;")
    assert "Where is the lesion?" in driver.find_element("css selector", "#omnipath-chat").text


def test_delete_this_conversation_deletes_it_from_the_log(server, browser, tmp_path) -> None:
    """The "Delete this conversation" button (in the Conversations panel) deletes the open
    conversation with its turns, and the chat empties."""
    from omnipath.slide import content_hash
    from omnipath.synth import write_synthetic_slide
    from storage.errors import NotFoundError

    url, services = server
    driver = browser
    driver.get(url)
    slide = write_synthetic_slide(tmp_path / "delete.tiff", 1800, 1200, seed=11).path
    driver.find_element("css selector", "#omnipath-upload input[type=file]").send_keys(str(slide))
    wait_for(
        driver,
        f"return window.omnipathViewer.instance.dziUrl === '/slides/{content_hash(slide)}.dzi';",
    )
    wait_for(driver, SLIDE_LOADED)
    _ask_in_page(driver, services, "How many lesions are there?", 2)
    conversation_id = services.store.list_conversations(limit=1)[0]["id"]
    assert "How many lesions" in _chat_text(driver)

    panel = driver.find_element(
        "xpath", "//*[contains(@class, 'label-wrap')][.//*[normalize-space()='Conversations']]"
    )
    panel.click()
    delete = wait_for(
        driver,
        "return [...document.querySelectorAll('button')]"
        ".find(b => b.textContent.trim() === 'Delete this conversation' && b.offsetParent);",
    )
    delete.click()
    deadline = time.monotonic() + 30
    while True:
        try:
            services.store.load_conversation(conversation_id)
        except NotFoundError:
            break
        assert time.monotonic() < deadline, "the conversation was not deleted"
        time.sleep(0.25)
    wait_for(
        driver,
        "return !document.querySelector('#omnipath-chat').innerText.includes('How many lesions');",
    )
