"""Who is asking: the owner of each request, in one of three modes chosen by the operator.

- "none" (`--auth none`, the default on 127.0.0.1): one local user, owner "local".
- "users" (`--auth-file users.toml`): Gradio's login page; passwords are bcrypt hashes kept by
  `python -m web.users`. Owner "user:<name>".
- "hf" (`--auth hf`, a Space with `hf_oauth: true`): Hugging Face sign-in through Gradio's
  gr.LoginButton; owner "hf:<username>", the username of gr.OAuthProfile.
- "public-demo" (`--public-demo`): anonymous visitors, each with a private space tied to a
  signed cookie (never to the IP address). Owner "anon:<random id>".

Gradio's handlers get the owner from their gr.Request; the tile routes from the same cookies
(Gradio's login cookie, or the visitor cookie), so a slide id alone opens nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omnipath.errors import OmniPathError
from storage.models import LOCAL_OWNER
from web.config import ConfigError, WebConfig

VISITOR_COOKIE = "omnipath_visitor"
# The owner name of a public demo visitor starts with this (their spaces expire).
VISITOR_PREFIX = "anon:"
HF_PREFIX = "hf:"
SECRET_FILE = "secret.key"
_VISITOR_ID_BYTES = 16


def server_secret(data_dir: Path) -> bytes:
    """The key that signs visitor cookies: <data_dir>/secret.key, created readable by this user
    only (0600) on first start and kept, so cookies survive a restart."""
    path = Path(data_dir) / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    key = path.read_text().strip()
    if len(key) < 32:
        raise ConfigError(f"The server secret {path} is damaged; delete it to make a new one.")
    return key.encode()


def is_loopback(host: str) -> bool:
    """True for 127.0.0.1, ::1, localhost: only this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(config: WebConfig) -> None:
    """Refuse to serve everyone's data to everyone: a non-loopback address with no login needs
    --public-demo (anonymous private spaces)."""
    if config.auth_mode == "none" and not is_loopback(config.host):
        raise ConfigError(
            f"Listening on {config.host} without logins would show every visitor everyone's "
            "slides and conversations: add --auth-file users.toml (logins) or --public-demo "
            "(each visitor gets a private space), or listen on 127.0.0.1."
        )


class NotSignedInError(OmniPathError):
    """A request that needs an owner came from nobody (no login, no visitor cookie)."""


class Identity:
    """The owner of a request in the configured mode (see the module's docstring)."""

    def __init__(self, mode: str, secret: bytes, users_file: Path | None = None) -> None:
        self.mode = mode
        self._secret = secret
        self.users_file = users_file
        self.gradio_app: Any = None  # set once Gradio is mounted (its login tokens)

    @classmethod
    def from_config(cls, config: WebConfig) -> Identity:
        secret = server_secret(config.data_dir) if config.auth_mode == "public-demo" else b""
        return cls(config.auth_mode, secret, config.auth_file)

    def describe(self) -> str:
        """The mode in a sentence, for the banner."""
        return {
            "none": "One local user (no login).",
            "users": "Signed-in users; each sees only their own slides and conversations.",
            "hf": "Hugging Face sign-in; each user sees only their own slides and conversations.",
            "public-demo": "Public demo: each visitor has a private space, kept for a while.",
        }[self.mode]

    # --- visitor cookies ----------------------------------------------------------------------

    def _sign(self, visitor: str) -> str:
        return hmac.new(self._secret, visitor.encode(), hashlib.sha256).hexdigest()

    def new_visitor_cookie(self) -> str:
        visitor = secrets.token_hex(_VISITOR_ID_BYTES)
        return f"{visitor}.{self._sign(visitor)}"

    def visitor_of(self, cookie: str | None) -> str | None:
        """The visitor id in a cookie value the server signed, else None."""
        visitor, _, mac = (cookie or "").partition(".")
        if len(visitor) != 2 * _VISITOR_ID_BYTES or not hmac.compare_digest(
            mac, self._sign(visitor)
        ):
            return None
        return visitor

    # --- owners -------------------------------------------------------------------------------

    def owner_of(self, request: Any) -> str | None:
        """The owner of a gr.Request or a Starlette request, or None when nobody is signed in
        (a None request is a direct call: the local user in "none" mode, nobody otherwise)."""
        if self.mode == "none":
            return LOCAL_OWNER
        if request is None:
            return None
        cookies = getattr(request, "cookies", None) or {}
        if self.mode == "public-demo":
            visitor = self.visitor_of(_cookie(cookies, VISITOR_COOKIE))
            return None if visitor is None else f"{VISITOR_PREFIX}{visitor}"
        if self.mode == "hf":
            profile = hf_profile(request)
            return None if profile is None else f"{HF_PREFIX}{profile.username}"
        name = getattr(request, "username", None) or self._logged_in(cookies)
        return None if not name else f"user:{name}"

    def require_owner(self, request: Any) -> str:
        """owner_of(), or NotSignedInError with a sentence when there is nobody."""
        owner = self.owner_of(request)
        if owner is None:
            raise NotSignedInError(
                "Sign in with Hugging Face first (the Sign in button at the top of the page)."
                if self.mode == "hf"
                else "Sign in first (reload the page)."
            )
        return owner

    def _logged_in(self, cookies: Any) -> str | None:
        """The user of Gradio's login cookie (for the routes outside Gradio: tiles)."""
        app = self.gradio_app
        if app is None:
            return None
        token = _cookie(cookies, f"access-token-{app.cookie_id}") or _cookie(
            cookies, f"access-token-unsecure-{app.cookie_id}"
        )
        return app.tokens.get(token) if token else None

    def check_password(self, username: str, password: str) -> bool:
        """Gradio's auth= callable: the users file is read at each login, so users added or
        removed with `python -m web.users` count at once."""
        from web.users import verify

        return self.users_file is not None and verify(self.users_file, username, password)


def hf_profile(request: Any) -> Any:
    """The gr.OAuthProfile Gradio would give a handler of this request (a gr.Request or a
    Starlette request), from the OAuth session; None when nobody is signed in or the sign-in
    expired."""
    from gradio import oauth
    from gradio.helpers import _session_from_request

    info = oauth._get_valid_oauth_info_from_session(_session_from_request(request))
    userinfo = (info or {}).get("userinfo") or {}
    if not userinfo.get("preferred_username"):
        return None
    return oauth.OAuthProfile({"name": "", "profile": "", "picture": "", **userinfo})


def _cookie(cookies: Any, name: str) -> str | None:
    """A cookie from Starlette's dict or gr.Request's copy of it (which has no .get)."""
    return str(cookies[name]) if name in cookies else None


def _https(scope: Scope) -> bool:
    """Whether the browser reached us over HTTPS (directly or through a proxy, as on Spaces,
    where the app runs in an iframe of another site: its cookie must be SameSite=None; Secure
    to be sent at all)."""
    forwarded = dict(scope["headers"]).get(b"x-forwarded-proto", b"")
    return scope.get("scheme") == "https" or forwarded.split(b",")[0].strip() == b"https"


class VisitorCookie:
    """ASGI middleware (public demo): a request without a valid visitor cookie gets a new one,
    seen by the app at once (added to the request) and set on the response."""

    def __init__(self, app: ASGIApp, identity: Identity, max_age_s: int) -> None:
        self.app = app
        self.identity = identity
        self.max_age_s = max_age_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookies = SimpleCookie()
        for key, value in scope["headers"]:
            if key == b"cookie":
                try:
                    cookies.load(value.decode("latin-1"))
                except Exception:  # a malformed Cookie header: treated as none
                    pass
        held = cookies.get(VISITOR_COOKIE)
        if self.identity.visitor_of(held.value if held else None) is not None:
            await self.app(scope, receive, send)
            return
        value = self.identity.new_visitor_cookie()
        headers = [(k, v) for k, v in scope["headers"] if k != b"cookie"]
        cookies[VISITOR_COOKIE] = value
        jar = "; ".join(f"{k}={m.value}" for k, m in cookies.items())
        scope = {**scope, "headers": [*headers, (b"cookie", jar.encode("latin-1"))]}
        set_cookie = (
            f"{VISITOR_COOKIE}={value}; Path=/; Max-Age={self.max_age_s}; HttpOnly; "
            + ("Secure; SameSite=None" if _https(scope) else "SameSite=Lax")
        ).encode("latin-1")

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], (b"set-cookie", set_cookie)]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)
