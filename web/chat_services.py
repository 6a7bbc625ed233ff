"""Everything the chat needs, built in one place from the config: the viewer's services (slide
registry, tiles), the engine (a loaded model), the session log (Store) and the upload folder.

The chat's settings (model, model_dtype, quantization, device, conversation, model_is_demo,
database_url, max_upload_bytes, log_file_names, max_concurrent_answers) are WebConfig fields:
see web/config.py for their defaults, OMNIPATH_* variables and flags.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from web.config import WebConfig
from web.identity import Identity
from web.services import WebServices, build_services
from web.upload_guard import ReceivedUploads

# Said to a browser session (or API client) that asks while its last question is answered.
ONE_QUESTION = (
    "Your previous question is still being answered; wait for its answer or press Stop, "
    "then ask again."
)


@dataclass
class ChatServices:
    """The parts every chat handler gets (built once per app by `build_chat_services`)."""

    web: WebServices
    engine: Any  # omnipath.engine.Engine
    store: Any  # storage.Store
    settings: WebConfig
    # Stop flags of the answers being generated now, by conversation id.
    stops: dict[str, threading.Event] = field(default_factory=dict)
    stops_lock: threading.Lock = field(default_factory=threading.Lock)
    # Browser sessions (Gradio's session_hash) with a question being answered: one each.
    asking_sessions: set[str] = field(default_factory=set)
    # The files Gradio's upload route stored (recorded by web.upload_guard.UploadGuard); the
    # upload handlers take no other path.
    received: ReceivedUploads = field(default_factory=ReceivedUploads)
    # Who is asking (web/identity.py); built from `settings` when not given.
    identity: Identity | None = None

    def __post_init__(self) -> None:
        if self.identity is None:
            self.identity = Identity.from_config(self.settings)

    def owner_of(self, request: Any) -> str:
        """The owner of a gr.Request (web/identity.py); NotSignedInError when there is none."""
        return self.identity.require_owner(request)  # type: ignore[union-attr]

    def claim_question_slot(self, session: str | None) -> bool:
        """Take the browser session's one question slot; False when a question of it is
        being answered already (no session, as in direct calls: always True)."""
        if session is None:
            return True
        with self.stops_lock:
            if session in self.asking_sessions:
                return False
            self.asking_sessions.add(session)
            return True

    def free_question_slot(self, session: str | None) -> None:
        with self.stops_lock:
            self.asking_sessions.discard(session)

    @property
    def registry(self) -> Any:
        return self.web.registry

    def model_banner(self) -> dict[str, Any]:
        """What the banner shows: model id, precision, device, demonstration or not."""
        info = dict(self.engine.info)
        precision = info.get("quantization") or info.get("dtype") or "unknown"
        if info.get("quantization"):
            precision = f"{info['quantization']} ({info.get('dtype')} compute)"
        return {
            "model_id": info.get("model_id", "unknown"),
            "revision": info.get("revision"),
            "precision": precision,
            "device": info.get("device", "unknown"),
            "demo": self.settings.demo_model,
            "supports_masks": bool(info.get("supports_masks", False)),
            "access": self.identity.describe(),  # type: ignore[union-attr]
        }


def build_engine(config: WebConfig) -> Any:
    """Load the configured model and wrap it in an Engine (torch is imported only here)."""
    from omnipath.engine import Engine
    from omnipath.model.loading import LoadOptions, load_model

    loaded = load_model(
        config.model,
        LoadOptions(
            dtype=config.model_dtype,
            quantization=config.quantization,
            device=config.device,
            conversation=config.conversation,
        ),
    )
    return Engine(
        loaded.model,
        loaded.tokenizer,
        model_id=loaded.model_id,
        revision=loaded.revision,
        demo=config.demo_model,
        quantization=loaded.quantization,
        max_batch_size=config.max_concurrent_answers,
    )


def build_store(config: WebConfig) -> Any:
    from storage import Store

    url = config.database_url
    if url is None:
        Path(config.data_dir).mkdir(parents=True, exist_ok=True)
        url = str(Path(config.data_dir) / "omnipath.db")
    return Store(url, log_file_names=config.log_file_names)


def build_chat_services(
    config: WebConfig,
    *,
    web: WebServices | None = None,
    engine: Any = None,
    store: Any = None,
) -> ChatServices:
    """All chat parts from `config` (a WebConfig); pass `web`, `engine` or `store` to reuse
    ones already built (tests inject a tiny engine and a temporary database)."""
    if web is None:
        web = build_services(config)
    if engine is None:
        engine = build_engine(config)
    if store is None:
        store = build_store(config)
    config.uploads_dir.mkdir(parents=True, exist_ok=True)
    chat = ChatServices(web=web, engine=engine, store=store, settings=config)
    from web.slide_files import delete_unheld_files  # late: it imports this module

    delete_unheld_files(chat)
    return chat
