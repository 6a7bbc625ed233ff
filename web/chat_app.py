"""The full OmniPath UI: the slide viewer with the chat beside it (Gradio Blocks), built by
web.app.build_demo (which makes the services from the config) and served by web.app.create_app.

Every action calls a plain function in web/handlers.py; this module only adapts values to
components, turns typed errors (OmniPathError.message) into gr.Error / gr.Warning sentences,
and names the endpoints gradio_client calls:

    /upload  (file)                                   -> {slide_id, conversation_id, meta}
    /ask     (conversation_id, question, pgdfc_mode, s, max_new_tokens, temperature, region)
             streams {conversation_id, text, done, turn_id, answer, layers}
    /export  (conversation_id, fmt: "json" | "geojson" | "html") -> the file

"Ask about this region": web/chat.js lets the user drag a rectangle on the viewer; the next
question passes it to the engine as l0_region, which becomes a <mask> input map for models
with a mask encoder (OmniPath) and a sentence naming the region for the others (LLaVA).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from omnipath.facts import PGDFC_MODES
from web import handlers
from web.blocks import OmniPathBlocks
from web.chat_api import (
    ANSWER_CONCURRENCY,
    add_named_api,
    one_question,
    sentence,
    upload_slide,
    write_export,
)
from web.chat_services import ChatServices
from web.exports import DownloadFolder
from web.question import form_options
from web.share_ui import add_share_panel
from web.viewer_component import build_viewer, viewer_state

log = logging.getLogger(__name__)

CHAT_JS = Path(__file__).resolve().parent / "chat.js"

_REGION_TEMPLATE = (
    '<div class="oc-region" data-testid="omnipath-region">'
    '<button type="button" class="oc-draw">Ask about a region</button>'
    '<button type="button" class="oc-clear">Clear region</button>'
    '<span class="oc-region-label"></span></div>'
)
_REGION_CSS = """
.oc-region { display: flex; gap: 8px; align-items: center; margin-top: 6px; font-size: 13px; }
.oc-region button { padding: 3px 10px; border: 1px solid #999; border-radius: 4px; background: #fafafa; cursor: pointer; }
.oc-region button:hover { background: #eee; }
"""
_REGION_BIND = "\nwindow.omnipathChat.bindRegionControl(element, props, trigger, watch);\n"


def _session(
    slide_id: str | None = None, meta: dict | None = None, conversation_id: str | None = None
) -> dict[str, Any]:
    """Per-browser state: the open conversation and its slide (shown in the viewer)."""
    return {"conversation_id": conversation_id, "slide_id": slide_id, "meta": meta}


def _session_of(result: dict[str, Any]) -> dict[str, Any]:
    """The session for a conversation the handlers just opened (an upload, a reopen)."""
    return _session(result["slide_id"], result["meta"], result["conversation_id"])


def banner_markdown(banner: dict[str, Any]) -> str:
    """The model banner: model id, precision, device, and whether it is a demonstration."""
    text = (
        f"**Model** `{banner['model_id']}`"
        + (f" @ `{banner['revision'][:10]}`" if banner.get("revision") else "")
        + f" · **precision** {banner['precision']} · **device** {banner['device']}"
    )
    if not banner.get("supports_masks"):
        text += " · masks unavailable with this model"
    if banner.get("access"):
        text += f"  \n**Access** {banner['access']}"
    if banner.get("demo"):
        text += (
            "  \n⚠ **Demonstration model**: its answers are not medical advice and must not "
            "be used for diagnosis."
        )
    return text


def _conversation_choices(services: ChatServices, owner: str) -> list[tuple[str, str]]:
    return [
        (f"{c['title']} · {c['turn_count']} turns · {c['slide_id'][:8]}", c["id"])
        for c in handlers.list_conversations(services, owner=owner)
    ]


def _region_html(services: ChatServices) -> gr.HTML:
    return gr.HTML(
        value="",
        html_template=_REGION_TEMPLATE,
        css_template=_REGION_CSS,
        js_on_load=CHAT_JS.read_text(encoding="utf-8") + _REGION_BIND,
        apply_default_css=False,
        elem_id="omnipath-region",
        container=False,
        padding=False,
    )


def live_text(update: handlers.AskUpdate) -> str:
    """The answer bubble while an answer streams: its text, or its place in the model's queue
    while it waits for a batch."""
    if update.waiting is None or update.text:
        return update.text
    if update.waiting == 0:
        return "⏳ Your question is next; the model is starting on it."
    ahead = "1 question is" if update.waiting == 1 else f"{update.waiting} questions are"
    return f"⏳ Waiting for the model: {ahead} ahead of yours."


def build_chat_demo(chat: ChatServices) -> gr.Blocks:
    """The product UI around `chat` (web.app.build_demo builds the services from the config
    and calls this; tests inject a tiny engine and a temporary log)."""
    initial_id = chat.web.initial_slide_id
    downloads = DownloadFolder()

    initial_meta = chat.web.tiles.meta(initial_id) if initial_id else None
    with OmniPathBlocks(title="OmniPath") as demo:
        session = gr.State(_session(initial_id, initial_meta))
        gr.Markdown("## OmniPath — ask about a whole-slide image")
        gr.Markdown(banner_markdown(chat.model_banner()), elem_id="omnipath-model-banner")
        if chat.identity.mode == "hf":  # type: ignore[union-attr]
            # Hugging Face sign-in; Gradio adds its OAuth routes for this button.
            gr.LoginButton(elem_id="omnipath-login")
        with gr.Row():
            with gr.Column(scale=3):
                viewer = build_viewer(viewer_state(initial_id, initial_meta))
                region = _region_html(chat)
            with gr.Column(scale=2):
                upload = gr.File(
                    label="Upload a slide (SVS, TIFF, NDPI, MRXS as .zip, DICOM, PNG/JPEG…)",
                    file_count="single",
                    type="filepath",
                    elem_id="omnipath-upload",
                    height=150,  # compact, so the question box shows beside the viewer
                )
                chatbot = gr.Chatbot(
                    label="Conversation",
                    elem_id="omnipath-chat",
                    height=350,
                    feedback_options=("Like", "Dislike"),
                )
                question = gr.Textbox(
                    label="Question",
                    placeholder="Ask about the slide, then press Enter",
                    elem_id="omnipath-question",
                    lines=2,
                )
                with gr.Row():
                    ask_button = gr.Button("Ask", variant="primary", elem_id="omnipath-ask")
                    stop_button = gr.Button("Stop", elem_id="omnipath-stop")
                    retry_button = gr.Button("Retry", elem_id="omnipath-retry")
                    undo_button = gr.Button("Undo", elem_id="omnipath-undo")
                with gr.Accordion("Settings", open=False):
                    mode = gr.Radio(
                        list(PGDFC_MODES),
                        value="attention",
                        label="PGDFC detail reads",
                        info="attention: where the question points; random: random tissue; "
                        "off: thumbnail only",
                    )
                    s_slider = gr.Slider(1, 32, value=8, step=1, label="S (detail patches)")
                    max_tokens = gr.Slider(1, 1024, value=256, step=1, label="Max new tokens")
                    temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature")
                with gr.Accordion("Conversations", open=False):
                    conversations = gr.Dropdown(
                        choices=[],
                        label="Past conversations (newest first)",
                        elem_id="omnipath-conversations",
                        interactive=True,
                    )
                    new_button = gr.Button("New conversation on this slide")
                    delete_button = gr.Button("Delete this conversation", variant="stop")
                with gr.Accordion("Export", open=False):
                    export_format = gr.Radio(
                        ["html", "json", "geojson"],
                        value="html",
                        label="Format",
                        info="html: report with snapshots; json: everything logged; "
                        "geojson: regions, boxes and masks for QuPath",
                    )
                    export_button = gr.Button("Export this conversation")
                    export_file = gr.File(label="Download", interactive=False)
                add_share_panel(chat, session)

        # --- UI handlers ----------------------------------------------------------------

        def refresh_conversations(state: dict[str, Any], request: gr.Request) -> Any:
            try:
                choices = _conversation_choices(chat, chat.owner_of(request))
            except Exception as exc:  # the list is a convenience: never break the page
                gr.Warning(sentence(exc))
                return gr.update()
            return gr.update(choices=choices, value=state.get("conversation_id"))

        def on_upload(path, state, request: gr.Request, progress=gr.Progress()):  # noqa: B008 (Gradio injects it)
            if not path:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            result = upload_slide(chat, path, progress, request)
            state = _session_of(result)
            return state, result["viewer_state"], [], "", refresh_conversations(state, request)

        def run_answer(
            start: Callable[[], handlers.Answering],
            state: dict[str, Any],
            messages: list[dict[str, Any]],
            question_text: str,
            owner: str,
        ) -> Iterator[tuple]:
            """Stream an answer into the chat: (chatbot, question box, viewer, region). The
            chat is updated from what the answer brings (its last update carries the message
            and the overlays built from the Answer); the log is read back only after a
            failure, to show what of it was logged."""
            conversation_id = state.get("conversation_id")
            try:
                stream = start()
                shown = [*messages, {"role": "user", "content": stream.message}]
                yield shown, "", gr.skip(), gr.skip()
                for update in stream:
                    live = [*shown, {"role": "assistant", "content": live_text(update)}]
                    if update.done:
                        layers = viewer_state(state["slide_id"], state["meta"], update.layers)
                        yield live, "", layers, ""
                    else:
                        yield live, "", gr.skip(), gr.skip()
            except Exception as exc:
                message = sentence(exc)
                try:  # show what was logged (a failed answer is logged with its error)
                    loaded = chat.store.load_conversation(conversation_id, owner=owner)
                    shown = handlers.chat_messages(loaded["turns"])
                except Exception:
                    shown = list(messages)
                nothing_logged = len(shown) <= len(messages)
                gr.Warning(message)
                yield shown, (question_text if nothing_logged else ""), gr.skip(), gr.skip()

        def on_ask(
            question_text,
            state,
            region_value,
            mode_value,
            s_value,
            tokens,
            temp,
            messages,
            request: gr.Request,
        ):
            if not state.get("slide_id"):
                raise gr.Error("Upload a slide first; questions are about the slide in the viewer.")
            try:
                owner = chat.owner_of(request)
                options = form_options(mode_value, s_value, tokens, temp)
                if not state.get("conversation_id"):  # the slide opened at start
                    conversation_id = handlers.new_conversation(
                        chat, state["slide_id"], owner=owner
                    )
                    state = {**state, "conversation_id": conversation_id}
            except Exception as exc:
                raise gr.Error(sentence(exc)) from None
            conversation_id = state["conversation_id"]

            def start() -> handlers.Answering:
                return handlers.ask(
                    chat, conversation_id, question_text, options, region=region_value, owner=owner
                )

            with one_question(chat, request):
                shown = list(messages or [])
                for outputs in run_answer(start, state, shown, question_text, owner):
                    yield (*outputs, state)

        def on_retry(state, mode_value, s_value, tokens, temp, messages, request: gr.Request):
            conversation_id = state.get("conversation_id")
            if not conversation_id:
                raise gr.Error("Upload a slide first.")
            try:
                owner = chat.owner_of(request)
                options = form_options(mode_value, s_value, tokens, temp)
            except Exception as exc:
                raise gr.Error(sentence(exc)) from None
            kept = list(messages or [])
            if kept and kept[-1]["role"] == "assistant":
                kept = kept[:-1]
            if kept and kept[-1]["role"] == "user":
                kept = kept[:-1]  # shown again as the question answered

            def start() -> handlers.Answering:
                return handlers.retry(chat, conversation_id, options, owner=owner)

            with one_question(chat, request):
                answers = run_answer(start, state, kept, "", owner)
                for chat_value, _q, layers, region_value in answers:
                    yield chat_value, layers, region_value

        def on_stop(state):
            conversation_id = state.get("conversation_id")
            if conversation_id and not handlers.stop_answer(chat, conversation_id):
                gr.Info("Nothing is being answered right now.")

        def on_undo(state, request: gr.Request):
            conversation_id = state.get("conversation_id")
            if not conversation_id:
                return gr.skip(), gr.skip(), gr.skip()
            try:
                result = handlers.undo(chat, conversation_id, owner=chat.owner_of(request))
            except Exception as exc:
                raise gr.Error(sentence(exc)) from None
            if result["question"] is None:
                gr.Info("There is nothing to undo.")
            layers = viewer_state(state["slide_id"], state["meta"], result["layers"])
            return result["messages"], result["question"] or "", layers

        def on_like(state, data: gr.LikeData, request: gr.Request):
            conversation_id = state.get("conversation_id")
            liked = data.liked
            if not conversation_id or not isinstance(data.index, int) or liked not in (True, False):
                return
            try:
                owner = chat.owner_of(request)
                handlers.feedback(chat, conversation_id, data.index, liked, owner=owner)
            except Exception as exc:
                gr.Warning(sentence(exc))

        def on_reopen(conversation_id, state, request: gr.Request):
            if not conversation_id or conversation_id == state.get("conversation_id"):
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            try:
                owner = chat.owner_of(request)
                result = handlers.reopen_conversation(chat, conversation_id, owner=owner)
            except Exception as exc:
                raise gr.Error(sentence(exc)) from None
            return _session_of(result), result["viewer_state"], result["messages"], ""

        def on_new(state, request: gr.Request):
            if not state.get("slide_id"):
                raise gr.Error("Upload a slide first.")
            try:
                owner = chat.owner_of(request)
                conversation_id = handlers.new_conversation(chat, state["slide_id"], owner=owner)
            except Exception as exc:
                raise gr.Error(sentence(exc)) from None
            state = {**state, "conversation_id": conversation_id}
            layers = viewer_state(state["slide_id"], state["meta"], handlers.empty_layers())
            return state, [], layers, ""

        def on_delete(state, request: gr.Request):
            conversation_id = state.get("conversation_id")
            if not conversation_id:
                raise gr.Error("There is no conversation to delete.")
            try:
                handlers.delete_conversation(chat, conversation_id, owner=chat.owner_of(request))
            except Exception as exc:
                raise gr.Error(sentence(exc)) from None
            state = {**state, "conversation_id": None}
            layers = viewer_state(state["slide_id"], state["meta"], handlers.empty_layers())
            return state, [], layers, ""

        def on_export(state, fmt, request: gr.Request):
            conversation_id = state.get("conversation_id")
            if not conversation_id:
                raise gr.Error("There is no conversation to export yet; upload a slide first.")
            return write_export(chat, downloads, conversation_id, fmt, request)

        private = {"api_visibility": "private"}
        upload.upload(
            on_upload,
            [upload, session],
            [session, viewer, chatbot, region, conversations],
            concurrency_limit=2,
            concurrency_id="omnipath-upload",
            **private,
        )
        answer_inputs = [
            question,
            session,
            region,
            mode,
            s_slider,
            max_tokens,
            temperature,
            chatbot,
        ]
        answer_outputs = [chatbot, question, viewer, region, session]
        for trigger in (ask_button.click, question.submit):
            trigger(
                on_ask,
                answer_inputs,
                answer_outputs,
                concurrency_limit=chat.settings.max_concurrent_answers,
                concurrency_id=ANSWER_CONCURRENCY,
                **private,
            ).then(refresh_conversations, [session], [conversations], **private)
        retry_button.click(
            on_retry,
            [session, mode, s_slider, max_tokens, temperature, chatbot],
            [chatbot, viewer, region],
            concurrency_limit=chat.settings.max_concurrent_answers,
            concurrency_id=ANSWER_CONCURRENCY,
            **private,
        )
        stop_button.click(on_stop, [session], None, concurrency_limit=None, **private)
        undo_button.click(on_undo, [session], [chatbot, question, viewer], **private)
        chatbot.like(on_like, [session], None, concurrency_limit=None, **private)
        conversations.input(
            on_reopen, [conversations, session], [session, viewer, chatbot, region], **private
        )
        new_button.click(on_new, [session], [session, chatbot, viewer, region], **private).then(
            refresh_conversations, [session], [conversations], **private
        )
        delete_button.click(
            on_delete, [session], [session, chatbot, viewer, region], **private
        ).then(refresh_conversations, [session], [conversations], **private)
        export_button.click(on_export, [session, export_format], [export_file], **private)
        demo.load(refresh_conversations, [session], [conversations], **private)

        add_named_api(chat, downloads)
        demo.queue(max_size=chat.settings.max_queued_questions)
    demo.omnipath_services = chat  # type: ignore[attr-defined]  # tests and the launcher
    return demo
