"""The named API that gradio_client calls (/upload, /ask, /export; see web/chat_app.py), and
what the page and the API share: the sentence for an error, an upload, an export, and the rule
of one question in flight per browser session (a gradio_client Client is one session).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gradio as gr

from omnipath.errors import OmniPathError
from web import handlers
from web import upload as uploads
from web.chat_services import ONE_QUESTION, ChatServices
from web.exports import DownloadFolder
from web.question import form_options

log = logging.getLogger(__name__)

ANSWER_CONCURRENCY = "omnipath-answer"
UNEXPECTED = "Something went wrong on the server (it was logged); please try again."


def sentence(exc: BaseException) -> str:
    """What to tell the person: a typed error's sentence, else UNEXPECTED (and log it)."""
    if isinstance(exc, OmniPathError):
        return exc.message
    log.exception("unexpected error in a chat handler", exc_info=exc)
    return UNEXPECTED


@contextmanager
def one_question(chat: ChatServices, request: gr.Request | None) -> Iterator[None]:
    """Hold this browser session's one question slot while its answer runs (gr.Error with a
    sentence when a question of the session is already being answered); the slot is freed
    when the answer ends, is stopped, or its page goes away (the generator is closed)."""
    session = getattr(request, "session_hash", None)
    if not chat.claim_question_slot(session):
        raise gr.Error(ONE_QUESTION)
    try:
        yield
    finally:
        chat.free_question_slot(session)


def upload_slide(
    chat: ChatServices, path: str, progress: gr.Progress, request: gr.Request | None
) -> dict[str, Any]:
    """web.upload.upload_slide for the asker, with Gradio's progress bar; errors as a
    sentence."""
    try:
        chat.received.check(path)  # before the path is looked at (web/upload_guard.py)
        return uploads.upload_slide(
            chat,
            path,
            file_name=Path(path).name,
            progress=lambda fraction, text: progress(fraction, desc=text),
            owner=chat.owner_of(request),
        )
    except Exception as exc:
        raise gr.Error(sentence(exc)) from None


def write_export(
    chat: ChatServices,
    downloads: DownloadFolder,
    conversation_id: str,
    fmt: str,
    request: gr.Request | None,
) -> str:
    """The asker's export written into the private download folder; errors as a sentence."""
    try:
        owner = chat.owner_of(request)
        return str(downloads.export(chat, conversation_id, fmt, owner=owner))
    except Exception as exc:
        raise gr.Error(sentence(exc)) from None


def add_named_api(chat: ChatServices, downloads: DownloadFolder) -> None:
    """The /upload, /ask and /export endpoints, on components nobody sees (call inside the
    Blocks)."""
    with gr.Column(visible=False):
        api_file = gr.File(type="filepath")
        api_upload_out = gr.JSON()
        api_conversation = gr.Textbox()
        api_question = gr.Textbox()
        api_mode = gr.Textbox(value="attention")
        # no precision: Gradio would round (and fail on NaN) before form_options can say why
        api_s = gr.Number(value=8)
        api_max_tokens = gr.Number(value=256)
        api_temperature = gr.Number(value=0.0)
        api_region = gr.Textbox(value="")
        api_ask_out = gr.JSON()
        api_format = gr.Textbox(value="json")
        api_export_out = gr.File()
        api_upload_button = gr.Button()
        api_ask_button = gr.Button()
        api_export_button = gr.Button()

    def api_upload(path: str | None, request: gr.Request, progress=gr.Progress()):  # noqa: B008
        """Upload a slide; returns {slide_id, conversation_id, meta}."""
        if not path:
            raise gr.Error("No file was sent.")
        result = upload_slide(chat, path, progress, request)
        return {k: result[k] for k in ("slide_id", "conversation_id", "meta")}

    def api_ask(
        conversation_id,
        question,
        pgdfc_mode,
        s,
        max_new_tokens,
        temperature,
        region,
        request: gr.Request,
    ):
        """Ask in a conversation; streams {text, done, turn_id, answer, layers}."""
        with one_question(chat, request):
            try:
                owner = chat.owner_of(request)
                options = form_options(pgdfc_mode, s, max_new_tokens, temperature)
                stream = handlers.ask(
                    chat,
                    conversation_id or "",
                    question or "",
                    options,
                    region=region or None,
                    owner=owner,
                )
                for update in stream:
                    yield update.to_dict()
            except Exception as exc:
                raise gr.Error(sentence(exc)) from None

    def api_export(conversation_id, fmt, request: gr.Request):
        """Export a conversation as json, geojson or html; returns the file."""
        return write_export(chat, downloads, conversation_id or "", fmt, request)

    answer_queue: dict[str, Any] = {
        "concurrency_limit": chat.settings.max_concurrent_answers,
        "concurrency_id": ANSWER_CONCURRENCY,
    }
    api_upload_button.click(
        api_upload,
        [api_file],
        [api_upload_out],
        api_name="upload",
        concurrency_limit=2,
        concurrency_id="omnipath-upload",
    )
    api_ask_button.click(
        api_ask,
        [api_conversation, api_question, api_mode, api_s, api_max_tokens, api_temperature,
         api_region],
        [api_ask_out],
        api_name="ask",
        **answer_queue,
    )  # fmt: skip
    api_export_button.click(
        api_export, [api_conversation, api_format], [api_export_out], api_name="export"
    )
