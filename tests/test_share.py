"""Sharing a case (issue 12, section 3): a read-only link to one conversation, through a live
server with logins: the page opens for anyone holding the link, with the turns and a viewer
whose tiles the token opens; it asks nothing; revoked, expired and unknown links are one 404."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import pytest
from PIL import Image
from sqlalchemy import text

from storage.log import NO_SHARE
from tests.live_server import serving_app
from web.share import SHARE_PARAM, share_path
from web.share_ui import NO_CONVERSATION, create_link, revoke_links

PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-22"}


def test_a_share_link_opens_read_only_until_revoked_or_expired(tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    from web.users import add_user

    users = tmp_path / "users.toml"
    for name, password in PASSWORDS.items():
        add_user(users, name, password)
    image = tmp_path / "slide.png"
    Image.new("RGB", (600, 400), (200, 90, 160)).save(image)
    with serving_app(tmp_path, auth_file=users) as (url, chat):
        as_alice = Client(url, auth=("alice", PASSWORDS["alice"]), verbose=False)
        mine = as_alice.predict(handle_file(str(image)), api_name="/upload")
        conversation_id, slide_id = mine["conversation_id"], mine["slide_id"]
        asked = list(as_alice.submit(conversation_id, "What is here?", api_name="/ask"))
        assert asked[-1]["done"]
        alice = SimpleNamespace(username="alice", cookies={})
        bob = SimpleNamespace(username="bob", cookies={})

        # The UI's panel: Alice shares her conversation; Bob cannot share it, nor revoke it.
        with pytest.raises(gr.Error, match=NO_CONVERSATION):
            create_link(chat, {"conversation_id": None}, "1 day", alice)
        with pytest.raises(gr.Error, match="No conversation"):
            create_link(chat, {"conversation_id": conversation_id}, "1 day", bob)
        with pytest.raises(gr.Error, match="No conversation"):
            revoke_links(chat, {"conversation_id": conversation_id}, bob)
        shown = create_link(chat, {"conversation_id": conversation_id}, "1 day", alice)
        token = shown.split('href="share/')[1].split('"')[0]
        assert share_path(token) in shown

        # Anyone with the link (no login) sees the turns, the slide in a viewer, and Present.
        anyone = httpx.Client(base_url=url, timeout=60)
        page = anyone.get(share_path(token))
        assert page.status_code == 200, page.text
        assert "What is here?" in page.text and "Answer 1 overlays" in page.text
        assert f"slides/{slide_id}.dzi?{SHARE_PARAM}={token}" in page.text
        assert 'id="share-present"' in page.text and "openseadragon.min.js" in page.text
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert anyone.get("omnipath-viewer/openseadragon/openseadragon.min.js").status_code == 200
        # The token opens the shared slide's deep-zoom routes (twice: the tile is then cached).
        dzi, tile = f"slides/{slide_id}.dzi", f"slides/{slide_id}_files/0/0_0.jpeg"
        for path in (dzi, tile, tile):
            assert anyone.get(path, params={SHARE_PARAM: token}).status_code == 200, path
            assert anyone.get(path).status_code == 404, path
        # It asks nothing: Gradio's API refuses a caller without a login, token or not.
        turns = len(chat.store.load_shared(token)["turns"])
        refused = anyone.post(
            f"gradio_api/call/ask?{SHARE_PARAM}={token}",
            json={"data": [conversation_id, "Mine now?"]},
        )
        assert refused.status_code == 401
        assert len(chat.store.load_shared(token)["turns"]) == turns

        # Revoked, expired and unknown links: the same 404 and sentence, and no tiles.
        missing = anyone.get(share_path("x" * 32))
        assert missing.status_code == 404 and NO_SHARE in missing.text
        assert "revoked" in revoke_links(chat, {"conversation_id": conversation_id}, alice)
        expired = chat.store.create_share(conversation_id, "user:alice", 3600)
        with chat.store.engine.begin() as conn:
            conn.execute(
                text("UPDATE shares SET expires_at = :t WHERE token = :k"),
                {"t": datetime(2020, 1, 1, tzinfo=UTC), "k": expired},
            )
        for dead in (token, expired):
            gone = anyone.get(share_path(dead))
            assert (gone.status_code, gone.text) == (404, missing.text)
            for path in (dzi, tile):
                assert anyone.get(path, params={SHARE_PARAM: dead}).status_code == 404
        anyone.close()


@pytest.mark.browser
def test_a_share_page_pans_the_slide_and_presents_answer_by_answer(tmp_path: Path, tissue_png):
    from selenium.webdriver.common.by import By

    from tests.live_server import headless_chromium, wait_for
    from web import handlers
    from web.upload import upload_slide
    from web.users import add_user

    users = tmp_path / "users.toml"
    add_user(users, "alice", PASSWORDS["alice"])
    with serving_app(tmp_path, auth_file=users) as (url, chat):
        mine = upload_slide(chat, tissue_png[0], owner="user:alice")
        conversation_id = mine["conversation_id"]
        for question in ("First question?", "Second question?"):
            answer = list(handlers.ask(chat, conversation_id, question, owner="user:alice"))
            assert answer[-1].done
        token = chat.store.create_share(conversation_id, "user:alice", 3600)
        with headless_chromium(1200, 900) as driver:  # no login: the link alone
            driver.get(url + share_path(token))
            wait_for(
                driver,
                "var v = window.omnipathShare; return v && v.world.getItemCount() === 1 "
                "&& v.world.getItemAt(0).getFullyLoaded();",
            )
            driver.find_element(By.ID, "share-present").click()
            steps = "return document.getElementById('share-steps').textContent;"
            visible = (
                "return Array.from(document.querySelectorAll('.turn.user'))"
                ".filter(e => e.offsetParent !== null).map(e => e.textContent);"
            )
            assert driver.execute_script(steps) == "Step 1 of 2"
            assert [t.split(": ", 1)[1] for t in driver.execute_script(visible)] == [
                "First question?"
            ]
            driver.find_element(By.ID, "share-next").click()
            assert driver.execute_script(steps) == "Step 2 of 2"
            assert driver.execute_script(visible)[0].endswith("Second question?")
            assert driver.execute_script(
                "return document.body.classList.contains('presenting') && "
                "document.getElementById('share-viewer').offsetWidth > 1000;"
            )
