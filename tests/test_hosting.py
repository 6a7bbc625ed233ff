"""Many people on one host (issue 12, sections 1 and 2): who is asking (web/identity.py,
web/users.py) and what each may see, through the handlers and a live server."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from omnipath.errors import NotFoundError
from tests.live_server import serving_app
from web import handlers
from web.config import ConfigError, WebConfig
from web.identity import VISITOR_COOKIE, Identity, check_exposure

REPO = Path(__file__).resolve().parents[1]
PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-22"}


# --- the users file and its CLI ---------------------------------------------------------------


def _users_cli(users: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "web.users", "--file", str(users), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=120,
    )


def test_the_users_cli_keeps_only_hashes_and_removes_users(tmp_path: Path) -> None:
    from web.users import read_users, verify

    users = tmp_path / "users.toml"
    for name, password in PASSWORDS.items():
        done = _users_cli(users, "add", name, "--password-stdin", stdin=password + "\n")
        assert done.returncode == 0, done.stderr
    text = users.read_text()
    assert all(password not in text for password in PASSWORDS.values())
    assert all(h.startswith("$2b$") for h in read_users(users).values())
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    assert verify(users, "alice", PASSWORDS["alice"])
    assert not verify(users, "alice", PASSWORDS["bob"]) and not verify(users, "carol", "x" * 9)
    assert _users_cli(users, "remove", "bob").returncode == 0
    assert _users_cli(users, "list").stdout.split() == ["alice"]
    refused = _users_cli(users, "add", "dave", "--password-stdin", stdin="short\n")
    assert refused.returncode == 2 and "at least 8 characters" in refused.stderr
    assert "dave" not in read_users(users)


# --- refusing to serve everyone's data to everyone --------------------------------------------


def test_a_public_address_without_logins_or_public_demo_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--public-demo"):
        check_exposure(WebConfig(host="0.0.0.0"))
    check_exposure(WebConfig(host="0.0.0.0", public_demo=True))
    check_exposure(WebConfig(host="0.0.0.0", auth="hf"))
    check_exposure(WebConfig(host="127.0.0.1"))
    check_exposure(WebConfig(host="::1"))
    done = subprocess.run(
        [sys.executable, "-m", "web", "--host", "0.0.0.0", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 2
    assert "without logins would show every visitor everyone's" in done.stderr
    assert "Traceback" not in done.stderr


def test_config_names_the_mode_and_refuses_contradictions(tmp_path: Path) -> None:
    from web.config import load_config

    users = tmp_path / "users.toml"
    users.write_text("[users]\n")
    assert load_config([], {}).auth_mode == "none"
    assert load_config(["--auth-file", str(users)], {}).auth_mode == "users"
    assert load_config([], {"OMNIPATH_PUBLIC_DEMO": "true"}).auth_mode == "public-demo"
    assert load_config(["--auth", "hf"], {}).auth_mode == "hf"
    assert load_config([], {"OMNIPATH_AUTH": "hf"}).auth_mode == "hf"
    for argv in (
        ["--auth", "hf", "--auth-file", str(users)],
        ["--auth", "hf", "--public-demo"],
        ["--auth", "github"],
        ["--auth", "file"],
        ["--auth", "none", "--auth-file", str(users)],
        ["--auth-file", str(users), "--public-demo"],
        ["--auth-file", str(tmp_path / "missing.toml")],
        ["--anonymous-keep-days", "0"],
    ):
        with pytest.raises(ConfigError):
            load_config(argv, {})


def test_visitor_cookies_are_signed_by_the_server_secret(tmp_path: Path) -> None:
    config = WebConfig(data_dir=tmp_path, public_demo=True)
    identity = Identity.from_config(config)
    cookie = identity.new_visitor_cookie()
    visitor = identity.visitor_of(cookie)
    assert visitor is not None and visitor in cookie
    assert stat.S_IMODE((tmp_path / "secret.key").stat().st_mode) == 0o600
    assert Identity.from_config(config).visitor_of(cookie) == visitor  # kept across restarts
    forged = "0" * 32 + cookie[32:]
    assert identity.visitor_of(forged) is None and identity.visitor_of("") is None
    other = Identity.from_config(WebConfig(data_dir=tmp_path / "other", public_demo=True))
    assert other.visitor_of(cookie) is None


# --- Hugging Face sign-in (a Space with hf_oauth: true) -------------------------------------


def _oauth_session(username: str, expires_at: float | None = None) -> dict[str, Any]:
    """What Gradio's /login/callback stores in the session after a Hugging Face sign-in."""
    info: dict[str, Any] = {"access_token": "t", "userinfo": {"preferred_username": username}}
    if expires_at is not None:
        info["expires_at"] = expires_at
    return {"oauth_info": info}


def _request(session: dict[str, Any] | None) -> Any:
    from starlette.requests import Request

    scope: dict[str, Any] = {"type": "http", "headers": [], "path": "/"}
    if session is not None:
        scope["session"] = session
    return Request(scope)


def test_the_owner_of_a_hugging_face_session_is_its_username() -> None:
    import gradio as gr

    from web.identity import NotSignedInError

    identity = Identity.from_config(WebConfig(auth="hf"))
    assert identity.owner_of(_request(_oauth_session("alice"))) == "hf:alice"
    assert identity.owner_of(gr.Request(_request(_oauth_session("bob")))) == "hf:bob"
    # Not signed in (no session middleware, an empty session, an expired sign-in): nobody.
    for session in (None, {}, _oauth_session("alice", expires_at=1.0)):
        assert identity.owner_of(_request(session)) is None
        with pytest.raises(NotSignedInError, match="Sign in with Hugging Face first"):
            identity.require_owner(_request(session))
    assert identity.owner_of(None) is None
    assert identity.describe().startswith("Hugging Face sign-in")


def test_hugging_face_sign_in_adds_the_login_routes_and_opens_tiles_to_the_signed_in(
    tmp_path: Path, tissue_png, tiny_engine, monkeypatch
) -> None:
    """Gradio attaches its OAuth routes for the LoginButton; the same session reaches the tile
    routes outside Gradio. Fake Space variables; nothing leaves this machine."""
    import base64
    import json

    import gradio.oauth

    pytest.importorskip("authlib", reason="gradio[oauth] (authlib) is not installed")
    itsdangerous = pytest.importorskip("itsdangerous")
    from starlette.middleware.sessions import SessionMiddleware
    from starlette.testclient import TestClient

    from storage import Store
    from web.app import create_app
    from web.chat_services import build_chat_services
    from web.upload import upload_slide

    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("SPACE_ID", "someone/omnipath")
    # On a Space Gradio wraps handlers with the `spaces` package; here `import spaces` finds
    # this repository's spaces/ folder instead (a namespace package), so no wrapping.
    monkeypatch.setattr("gradio.block_function.spaces", None)
    for name, value in {
        "OAUTH_CLIENT_ID": "client",
        "OAUTH_CLIENT_SECRET": "secret",
        "OAUTH_SCOPES": "openid profile",
        "OPENID_PROVIDER_URL": "https://huggingface.invalid",
    }.items():
        monkeypatch.setattr(gradio.oauth, name, value)
    config = WebConfig(
        model="tiny", host="0.0.0.0", auth="hf", data_dir=tmp_path / "data", sample_slide=False
    )
    chat = build_chat_services(config, engine=tiny_engine, store=Store(tmp_path / "log.db"))
    try:
        app = create_app(config, chat)
        paths = {getattr(r, "path", None) for r in chat.identity.gradio_app.routes}
        assert {"/login/huggingface", "/login/callback", "/logout"} <= paths
        slide_id = upload_slide(chat, tissue_png[0], owner="hf:alice")["slide_id"]
        middleware = next(m for m in app.user_middleware if m.cls is SessionMiddleware)
        signer = itsdangerous.TimestampSigner(middleware.kwargs["secret_key"])
        data = base64.b64encode(json.dumps(_oauth_session("alice")).encode())
        cookie = signer.sign(data).decode()
        client = TestClient(app, base_url="https://testserver")
        dzi = f"/slides/{slide_id}.dzi"
        assert client.get(dzi, cookies={"session": cookie}).status_code == 200
        assert TestClient(app, base_url="https://testserver").get(dzi).status_code == 404
    finally:
        chat.web.registry.close()
        chat.store.close()


# --- what each may see, through the handlers --------------------------------------------------


@pytest.fixture
def two_owners(tmp_path: Path, tissue_png, tiny_engine) -> Iterator[dict[str, Any]]:
    from storage import Store
    from web.chat_services import build_chat_services
    from web.upload import upload_slide

    config = WebConfig(model="tiny", data_dir=tmp_path / "data", sample_slide=False)
    chat = build_chat_services(config, engine=tiny_engine, store=Store(tmp_path / "log.db"))
    uploaded = upload_slide(chat, tissue_png[0], owner="user:alice")
    try:
        yield {"chat": chat, **uploaded}
    finally:
        chat.web.registry.close()
        chat.store.close()


def test_a_stranger_cannot_list_reopen_ask_undo_like_export_or_delete(two_owners, tmp_path):
    from web.exports import export_conversation

    chat, conversation_id = two_owners["chat"], two_owners["conversation_id"]
    alice, bob = "user:alice", "user:bob"
    answer = list(handlers.ask(chat, conversation_id, "What is here?", owner=alice))
    assert answer[-1].done
    assert [c["id"] for c in handlers.list_conversations(chat, owner=alice)] == [conversation_id]
    assert handlers.list_conversations(chat, owner=bob) == []
    calls = {
        "reopen": lambda cid: handlers.reopen_conversation(chat, cid, owner=bob),
        "ask": lambda cid: handlers.ask(chat, cid, "Mine now?", owner=bob),
        "retry": lambda cid: handlers.retry(chat, cid, owner=bob),
        "undo": lambda cid: handlers.undo(chat, cid, owner=bob),
        "like": lambda cid: handlers.feedback(chat, cid, 1, True, owner=bob),
        "export": lambda cid: export_conversation(chat, cid, "json", tmp_path, owner=bob),
        "delete": lambda cid: handlers.delete_conversation(chat, cid, owner=bob),
    }
    for name, call in calls.items():
        with pytest.raises(NotFoundError) as theirs:
            call(conversation_id)
        with pytest.raises(NotFoundError) as missing:
            call("f" * 32)
        assert theirs.value.message == missing.value.message.replace("f" * 32, conversation_id), (
            name
        )
    # Nor can Bob start a conversation on Alice's slide by its id.
    with pytest.raises(NotFoundError):
        handlers.new_conversation(chat, two_owners["slide_id"], owner=bob)
    # Alice's conversation is untouched; deleting it from her side deletes it.
    assert len(handlers.reopen_conversation(chat, conversation_id, owner=alice)["messages"]) == 2
    handlers.delete_conversation(chat, conversation_id, owner=alice)
    assert handlers.list_conversations(chat, owner=alice) == []
    with pytest.raises(NotFoundError):
        handlers.reopen_conversation(chat, conversation_id, owner=alice)


def test_the_same_slide_uploaded_by_two_is_stored_once_and_granted_to_each(
    two_owners, tissue_png
) -> None:
    from web.upload import upload_slide

    chat = two_owners["chat"]
    again = upload_slide(chat, tissue_png[0], owner="user:bob")
    assert again["slide_id"] == two_owners["slide_id"]
    assert len(list(chat.settings.uploads_dir.iterdir())) == 1
    assert chat.store.may_see_slide(again["slide_id"], "user:bob")
    assert [c["id"] for c in handlers.list_conversations(chat, owner="user:bob")] == [
        again["conversation_id"]
    ]


# --- two users on a live server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def logins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from web.users import add_user

    folder = tmp_path_factory.mktemp("logins")
    users = folder / "users.toml"
    for name, password in PASSWORDS.items():
        add_user(users, name, password)
    with serving_app(folder, auth_file=users) as (url, chat):
        yield {"url": url, "chat": chat, "folder": folder}


def _png(folder: Path, colour: tuple[int, int, int]) -> Path:
    path = folder / f"slide-{colour[0]}.png"
    Image.new("RGB", (600, 400), colour).save(path)
    return path


@contextmanager
def _logged_in(url: str, name: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=60) as client:
        answer = client.post("login", data={"username": name, "password": PASSWORDS[name]})
        assert answer.status_code == 200, answer.text
        yield client


def test_login_refuses_a_wrong_password_and_accepts_the_right_one(logins) -> None:
    url = logins["url"]
    wrong = httpx.post(url + "login", data={"username": "alice", "password": "guess-guess"})
    assert wrong.status_code == 400
    assert (
        httpx.post(url + "login", data={"username": "nobody", "password": "x"}).status_code == 400
    )
    assert httpx.get(url + "config", timeout=30).status_code == 401
    with _logged_in(url, "alice") as alice:
        assert alice.get("config").status_code == 200


def test_two_users_see_only_their_own_conversations_and_slides(logins) -> None:
    from gradio_client import Client, handle_file

    url, folder = logins["url"], logins["folder"]
    as_alice = Client(url, auth=("alice", PASSWORDS["alice"]), verbose=False)
    as_bob = Client(url, auth=("bob", PASSWORDS["bob"]), verbose=False)
    mine = as_alice.predict(handle_file(str(_png(folder, (200, 90, 160)))), api_name="/upload")
    conversation_id, slide_id = mine["conversation_id"], mine["slide_id"]
    asked = [u for u in as_alice.submit(conversation_id, "What is here?", api_name="/ask")]
    assert asked and asked[-1]["done"]
    export = as_alice.predict(conversation_id, "json", api_name="/export")
    assert conversation_id in Path(export).read_text()

    # Bob, by id: asking and exporting are refused exactly like an id that does not exist.
    for call in (
        lambda cid: as_bob.predict(cid, "Can I read it?", api_name="/ask"),
        lambda cid: as_bob.predict(cid, "json", api_name="/export"),
    ):
        refusals = []
        for cid in (conversation_id, "f" * 32):
            with pytest.raises(Exception) as refused:
                call(cid)
            refusals.append(str(refused.value).replace(cid, "ID"))
        assert refusals[0] == refusals[1] and "No conversation" in refusals[0]

    # Tiles: Alice's login opens them; Bob's, or none, gets the 404 of a missing slide.
    tile = f"slides/{slide_id}_files/0/0_0.jpeg"
    with _logged_in(url, "alice") as alice, _logged_in(url, "bob") as bob:
        assert alice.get(f"slides/{slide_id}.dzi").status_code == 200
        assert alice.get(tile).status_code == 200
        missing = bob.get(f"slides/{'e' * 64}.dzi").json()
        for path in (f"slides/{slide_id}.dzi", tile):  # the tile is in the cache now
            for client in (bob, httpx.Client(base_url=url)):
                refused = client.get(path)
                assert (refused.status_code, refused.json()) == (404, missing), path

    # The export Gradio serves from its cache: Alice's only.
    from gradio.utils import get_upload_folder

    served = list(Path(get_upload_folder()).rglob(Path(export).name))
    assert served
    with _logged_in(url, "alice") as alice, _logged_in(url, "bob") as bob:
        for path in served:
            assert alice.get(f"gradio_api/file={path}").status_code == 200
            assert bob.get(f"gradio_api/file={path}").status_code == 404

    # Nothing of Alice's reached Bob's log.
    chat = logins["chat"]
    assert chat.store.list_conversations(owner="user:bob") == []
    assert [c["id"] for c in chat.store.list_conversations(owner="user:alice")] == [conversation_id]


def test_public_demo_visitors_each_get_a_private_space(tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    with serving_app(tmp_path, public_demo=True) as (url, chat):
        first = httpx.get(url, timeout=30)
        cookie = first.cookies[VISITOR_COOKIE]
        assert "HttpOnly" in first.headers["set-cookie"]
        assert "SameSite=Lax" in first.headers["set-cookie"]
        # Behind an HTTPS proxy (Spaces shows the app in an iframe of another site).
        proxied = httpx.get(url, headers={"X-Forwarded-Proto": "https"}).headers["set-cookie"]
        assert "Secure; SameSite=None" in proxied
        # A visitor who comes back keeps their cookie; a forged one is replaced.
        assert VISITOR_COOKIE not in httpx.get(url, cookies={VISITOR_COOKIE: cookie}).cookies
        forged = httpx.get(url, cookies={VISITOR_COOKIE: "0" * 32 + cookie[32:]})
        assert forged.cookies[VISITOR_COOKIE] != cookie
        as_first = Client(url, httpx_kwargs={"cookies": {VISITOR_COOKIE: cookie}}, verbose=False)
        image = _png(tmp_path, (120, 60, 200))
        mine = as_first.predict(handle_file(str(image)), api_name="/upload")
        stranger = Client(url, verbose=False)  # a new visitor
        with pytest.raises(Exception, match="No conversation"):
            stranger.predict(mine["conversation_id"], "json", api_name="/export")
        dzi = f"slides/{mine['slide_id']}.dzi"
        assert httpx.get(url + dzi, cookies={VISITOR_COOKIE: cookie}).status_code == 200
        assert httpx.get(url + dzi).status_code == 404
        owners = {c["id"] for c in chat.store.list_conversations(owner=f"anon:{cookie[:32]}")}
        assert owners == {mine["conversation_id"]}


def test_the_banner_names_the_access_mode(logins) -> None:
    banner = logins["chat"].model_banner()
    assert banner["access"].startswith("Signed-in users")
    from web.chat_app import banner_markdown

    assert "**Access** Signed-in users" in banner_markdown(banner)


def test_a_public_demo_visitors_space_expires(two_owners) -> None:
    from sqlalchemy import text

    from web.access import expire_visitors
    from web.upload import upload_slide

    chat = two_owners["chat"]
    slide = chat.store.get_slide(two_owners["slide_id"])["stored_path"]
    visitor = upload_slide(chat, slide, owner="anon:visitor")
    assert expire_visitors(chat) == 0  # the default: 7 days
    with chat.store.engine.begin() as conn:
        for table, column in (("conversations", "updated_at"), ("slide_grants", "created_at")):
            conn.execute(
                text(f"UPDATE {table} SET {column} = :t"), {"t": "2020-01-01 00:00:00.000000"}
            )
    assert expire_visitors(chat) == 1
    with pytest.raises(NotFoundError):
        handlers.reopen_conversation(chat, visitor["conversation_id"], owner="anon:visitor")
    assert handlers.list_conversations(chat, owner="user:alice")  # signed-in users are kept


def test_the_login_page_in_a_browser_refuses_a_wrong_password(logins) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from tests.live_server import headless_chromium, wait_for

    form_shown = "return document.querySelectorAll('input[type=password]').length === 1;"
    with headless_chromium(1100, 800) as driver:
        for password, shown in (
            ("wrong-password", "return document.body.innerText.match(/incorrect/i) !== null;"),
            (PASSWORDS["alice"], "return !!document.getElementById('omnipath-model-banner');"),
        ):
            driver.get(logins["url"])
            wait_for(driver, form_shown)
            name, secret = driver.find_elements(By.CSS_SELECTOR, "input")[:2]
            name.send_keys("alice")
            secret.send_keys(password, Keys.ENTER)
            wait_for(driver, shown)


def test_in_a_browser_bob_neither_lists_nor_loads_alices_conversation_or_tiles(logins) -> None:
    """Alice asks through the API; Bob, logged in with chromium, finds her conversation
    neither in his list nor behind her slide's tile URLs (the 404 of a missing slide)."""
    from gradio_client import Client, handle_file
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from tests.live_server import headless_chromium, wait_for

    url, folder = logins["url"], logins["folder"]
    as_alice = Client(url, auth=("alice", PASSWORDS["alice"]), verbose=False)
    mine = as_alice.predict(handle_file(str(_png(folder, (40, 90, 200)))), api_name="/upload")
    asked = list(as_alice.submit(mine["conversation_id"], "Alice's private case?", api_name="/ask"))
    assert asked and asked[-1]["done"]
    with headless_chromium(1200, 900) as driver:
        driver.get(url)
        wait_for(driver, "return document.querySelectorAll('input[type=password]').length === 1;")
        name, secret = driver.find_elements(By.CSS_SELECTOR, "input")[:2]
        name.send_keys("bob")
        secret.send_keys(PASSWORDS["bob"], Keys.ENTER)
        wait_for(driver, "return !!document.getElementById('omnipath-model-banner');")
        driver.find_element(
            "xpath", "//*[contains(@class, 'label-wrap')][.//*[normalize-space()='Conversations']]"
        ).click()
        listed = wait_for(driver, "return document.querySelector('#omnipath-conversations input');")
        listed.click()  # opens the dropdown's options
        time.sleep(1)
        assert "Alice's private case" not in driver.find_element(By.TAG_NAME, "body").text
        statuses = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "Promise.all(arguments[0].map(p => fetch(p).then(r => r.status))).then(done);",
            [
                f"slides/{mine['slide_id']}.dzi",
                f"slides/{mine['slide_id']}_files/0/0_0.jpeg",
                f"slides/{'e' * 64}.dzi",
            ],
        )
        assert statuses == [404, 404, 404]
