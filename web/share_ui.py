"""The "Share (read-only link)" panel of the chat UI: a link to the current conversation that
lasts as long as its owner chose (web/share.py serves it), and a button revoking every link to
it. Built inside web/chat_app.py's Blocks with `add_share_panel`."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from web.chat_api import sentence
from web.chat_services import ChatServices
from web.share import SHARE_EXPIRIES, share_path

NO_CONVERSATION = "There is no conversation to share yet; ask a question first."


def create_link(chat: ChatServices, state: dict[str, Any], expiry: str, request: Any) -> str:
    """A new link to the session's conversation, as HTML for the panel (gr.Error otherwise)."""
    conversation_id = state.get("conversation_id")
    if not conversation_id:
        raise gr.Error(NO_CONVERSATION)
    if expiry not in SHARE_EXPIRIES:
        raise gr.Error(f"Choose how long the link lasts: {', '.join(SHARE_EXPIRIES)}.")
    try:
        owner = chat.owner_of(request)
        token = chat.store.create_share(conversation_id, owner, SHARE_EXPIRIES[expiry])
    except Exception as exc:
        raise gr.Error(sentence(exc)) from exc
    path = html.escape(share_path(token))
    return (
        f'<p>Read-only link ({html.escape(expiry.lower())}): <a href="{path}" target="_blank" '
        f'rel="noopener noreferrer">{path}</a> — anyone with it sees this slide and '
        "conversation, and asks nothing.</p>"
    )


def revoke_links(chat: ChatServices, state: dict[str, Any], request: Any) -> str:
    """Revokes every link to the session's conversation; says how many."""
    conversation_id = state.get("conversation_id")
    if not conversation_id:
        raise gr.Error(NO_CONVERSATION)
    try:
        revoked = chat.store.revoke_shares(conversation_id, chat.owner_of(request))
    except Exception as exc:
        raise gr.Error(sentence(exc)) from exc
    return f"<p>{revoked} link(s) to this conversation revoked; they open nothing now.</p>"


def add_share_panel(chat: ChatServices, session: gr.State) -> None:
    """The panel, wired to the session state (call inside the Blocks, in a column)."""
    with gr.Accordion("Share (read-only link)", open=False):
        expiry = gr.Radio(list(SHARE_EXPIRIES), value="7 days", label="The link lasts")
        share_button = gr.Button("Share (read-only link)")
        revoke_button = gr.Button("Revoke links", variant="stop")
        shown = gr.HTML(elem_id="omnipath-share-link")
    private = {"api_visibility": "private"}

    def on_share(state: dict[str, Any], chosen: str, request: gr.Request) -> str:
        return create_link(chat, state, chosen, request)

    def on_revoke(state: dict[str, Any], request: gr.Request) -> str:
        return revoke_links(chat, state, request)

    share_button.click(on_share, [session, expiry], [shown], **private)
    revoke_button.click(on_revoke, [session], [shown], **private)
