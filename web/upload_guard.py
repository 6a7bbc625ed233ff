"""Only files this server received through Gradio's upload route reach the upload handlers.

A Gradio event names its files by server path ({"path": ..., "meta": {"_type":
"gradio.FileData"}}), and before a handler runs Gradio copies each named file into its cache.
It checks that the file was uploaded only for apps started with launch(); this app is mounted
(web/app.py), so without more any client could have the server copy and open any file it can
read. The rule is kept in three places, each enough on its own:

- `UploadGuard`, ASGI middleware in front of Gradio: it records the paths Gradio's upload route
  hands out, and refuses any other request whose JSON names a file that is not one of them,
  before Gradio reads, stats or copies anything;
- Gradio's own check, switched on by `enable_gradio_upload_check`;
- `ReceivedUploads.check`, called by the upload handlers before they touch the path.

The refusal is the same sentence whether or not the named path exists, and the checks here are
on the path's text only (the disk is never asked about a path nobody uploaded).
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

import gradio as gr
from gradio.route_utils import API_PREFIX
from gradio.utils import get_upload_folder
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omnipath.errors import NotUploadedError

NOT_UPLOADED = "That file was not uploaded to this server; please upload it again."
# The most recent uploads remembered; an older one that was never used has to be sent again.
REMEMBERED_UPLOADS = 10_000
UPLOAD_ROUTE = f"{API_PREFIX}/upload"
# The fields of Gradio's FileData: a dict with a "path" and only these fields is a file too,
# even without the "meta" marker.
_FILE_FIELDS = frozenset({"path", "url", "size", "orig_name", "mime_type", "is_stream", "meta"})


class ReceivedUploads:
    """The paths Gradio's upload route stored, the most recent `limit` of them (thread-safe).
    Paths are compared as text after os.path.abspath; only paths inside Gradio's upload folder
    are ever recorded."""

    def __init__(self, limit: int = REMEMBERED_UPLOADS) -> None:
        self._limit = limit
        self._paths: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, paths: Iterable[str]) -> None:
        folder = os.path.abspath(get_upload_folder())
        with self._lock:
            for path in paths:
                path = os.path.abspath(path)
                if os.path.commonpath([path, folder]) == folder:
                    self._paths[path] = None
                    self._paths.move_to_end(path)
            while len(self._paths) > self._limit:
                self._paths.popitem(last=False)

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, str | os.PathLike):
            return False
        with self._lock:
            return os.path.abspath(path) in self._paths

    def check(self, path: str | os.PathLike[str]) -> None:
        """Raise NotUploadedError unless `path` came from this server's upload route."""
        if path not in self:
            raise NotUploadedError(NOT_UPLOADED, detail=f"refused path {os.fspath(path)!r}")


def named_files(data: Any) -> Iterator[str]:
    """The path of every file object in decoded JSON `data`, however deep (no recursion)."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            meta = item.get("meta")
            marked = isinstance(meta, dict) and meta.get("_type") == "gradio.FileData"
            if isinstance(item.get("path"), str) and (marked or item.keys() <= _FILE_FIELDS):
                yield item["path"]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


class UploadGuard:
    """ASGI middleware: record what the upload route stored; refuse requests naming other files.

    Requests that carry no body (GET, HEAD, OPTIONS) and multipart uploads pass untouched; any
    other body is read whole (Gradio reads it whole too) and, when it is JSON, every file it
    names must be one `received` holds, or the answer is a 400 with NOT_UPLOADED."""

    def __init__(self, app: ASGIApp, received: ReceivedUploads) -> None:
        self.app = app
        self.received = received

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
        elif scope["path"] == UPLOAD_ROUTE:
            await self.app(_identity_encoding(scope), receive, self._recording(send))
        elif _header(scope, b"content-type").startswith(b"multipart/"):
            await self.app(scope, receive, send)
        else:
            body = await _read_body(receive)
            if body is None:  # the client went away
                return
            if all(path in self.received for path in named_files(_json_or_none(body))):
                await self.app(scope, _replay(body, receive), send)
            else:
                response = JSONResponse({"detail": NOT_UPLOADED}, status_code=400)
                await response(scope, receive, send)

    def _recording(self, send: Send) -> Send:
        """`send`, noting the paths of a successful upload response (a JSON list of paths)."""
        status = 0
        chunks: list[bytes] = []

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status == 200:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    paths = _json_or_none(b"".join(chunks))
                    if isinstance(paths, list):
                        self.received.record(p for p in paths if isinstance(p, str))
            await send(message)

        return recording_send


def enable_gradio_upload_check(demo: gr.Blocks) -> None:
    """Switch on Gradio's own check that an event's files lie in its upload folder: Gradio runs
    it only once `has_launched` is set, which launch() does and mount_gradio_app does not."""
    demo.has_launched = True


def _header(scope: Scope, name: bytes) -> bytes:
    return next((v.lower() for k, v in scope["headers"] if k.lower() == name), b"")


def _identity_encoding(scope: Scope) -> Scope:
    """The request without Accept-Encoding, so the upload's answer comes back uncompressed."""
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"accept-encoding"]
    return {**scope, "headers": headers}


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # not JSON: Gradio cannot read a file from it either
        return None


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client disconnected first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then waits on the client."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
