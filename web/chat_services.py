"""Everything the chat needs, built in one place from the config: the viewer's services (slide
registry, tiles), the engine (a loaded model), the session log (Store) and the upload folder.

The chat's settings are read from the WebConfig when it has the field, else from an
OMNIPATH_* environment variable, else a default, so the chat works with any WebConfig:

    model            OMNIPATH_MODEL            "tiny" (random weights, a demonstration model)
    model_dtype      OMNIPATH_MODEL_DTYPE      "auto"
    quantization     OMNIPATH_QUANTIZATION     none ("4bit" / "8bit")
    device           OMNIPATH_DEVICE           "auto"
    model_is_demo    OMNIPATH_MODEL_IS_DEMO    true for "tiny" and the embedded omnipath-mini
    database_url     OMNIPATH_DATABASE_URL     <data_dir>/omnipath.db (SQLite)
    max_upload_bytes OMNIPATH_MAX_UPLOAD_BYTES 20 GiB
    log_file_names   OMNIPATH_LOG_FILE_NAMES   false (file names can identify patients)
    max_concurrent_answers OMNIPATH_MAX_CONCURRENT_ANSWERS 8 (answers queued in Gradio)
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnipath.errors import OmniPathError
from web.services import WebServices, build_services

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024**3
# Model ids that are demonstrations, not diagnostic models (labelled so in the banner).
DEMO_MODEL_MARKERS = ("tiny", "omnipath-mini")


class ChatConfigError(OmniPathError):
    """A chat setting (environment variable or config field) is invalid."""


def _as_bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    lowered = str(raw).strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ChatConfigError(f"The setting {name} must be true or false, not {raw!r}.")


def _as_int(name: str, raw: Any) -> int:
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise ChatConfigError(f"The setting {name} must be a whole number, not {raw!r}.") from None


@dataclass(frozen=True)
class ChatSettings:
    """The chat's part of the configuration (see the module docstring for the sources)."""

    model: str = "tiny"
    model_dtype: str = "auto"
    quantization: str | None = None
    device: str = "auto"
    model_is_demo: bool = True
    database_url: str | None = None
    data_dir: Path = Path("data")
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    log_file_names: bool = False
    max_concurrent_answers: int = 8

    @property
    def uploads_dir(self) -> Path:
        return Path(self.data_dir) / "slides"

    @property
    def exports_dir(self) -> Path:
        return Path(self.data_dir) / "exports"

    @classmethod
    def from_config(cls, config: Any, environ: Mapping[str, str] | None = None) -> ChatSettings:
        """Config field when present (and not None), else OMNIPATH_<NAME>, else the default."""
        environ = os.environ if environ is None else environ

        def pick(name: str, default: Any) -> Any:
            value = getattr(config, name, None)
            if value is not None:
                return value
            return environ.get(f"OMNIPATH_{name.upper()}", default)

        model = str(pick("model", "tiny")) or "tiny"
        demo_default = any(marker in model.lower() for marker in DEMO_MODEL_MARKERS)
        quantization = pick("quantization", None) or None
        if quantization is not None and quantization not in ("4bit", "8bit"):
            raise ChatConfigError(
                f"The quantization must be 4bit or 8bit (or empty), not {quantization!r}."
            )
        settings = cls(
            model=model,
            model_dtype=str(pick("model_dtype", "auto")),
            quantization=quantization,
            device=str(pick("device", "auto")),
            model_is_demo=_as_bool("model_is_demo", pick("model_is_demo", demo_default)),
            database_url=pick("database_url", None) or None,
            data_dir=Path(
                getattr(config, "data_dir", None) or environ.get("OMNIPATH_DATA_DIR", "data")
            ),
            max_upload_bytes=_as_int(
                "max_upload_bytes", pick("max_upload_bytes", DEFAULT_MAX_UPLOAD_BYTES)
            ),
            log_file_names=_as_bool("log_file_names", pick("log_file_names", False)),
            max_concurrent_answers=_as_int(
                "max_concurrent_answers", pick("max_concurrent_answers", 8)
            ),
        )
        if settings.max_upload_bytes < 1:
            raise ChatConfigError("The upload size limit (max_upload_bytes) must be positive.")
        if settings.max_concurrent_answers < 1:
            raise ChatConfigError("max_concurrent_answers must be at least 1.")
        return settings


@dataclass
class ChatServices:
    """The parts every chat handler gets (built once per app by `build_chat_services`)."""

    web: WebServices
    engine: Any  # omnipath.engine.Engine
    store: Any  # storage.Store
    settings: ChatSettings
    # Stop flags of the answers being generated now, by conversation id.
    stops: dict[str, threading.Event] = field(default_factory=dict)
    stops_lock: threading.Lock = field(default_factory=threading.Lock)

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
            "demo": bool(self.settings.model_is_demo),
            "supports_masks": bool(info.get("supports_masks", False)),
        }


def build_engine(settings: ChatSettings) -> Any:
    """Load the configured model and wrap it in an Engine (torch is imported only here)."""
    from omnipath.engine import Engine
    from omnipath.model.loading import LoadOptions, load_model

    loaded = load_model(
        settings.model,
        LoadOptions(
            dtype=settings.model_dtype, quantization=settings.quantization, device=settings.device
        ),
    )
    return Engine(
        loaded.model,
        loaded.tokenizer,
        model_id=loaded.model_id,
        revision=loaded.revision,
        demo=settings.model_is_demo,
        quantization=loaded.quantization,
    )


def build_store(settings: ChatSettings) -> Any:
    from storage import Store

    url = settings.database_url
    if url is None:
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        url = str(Path(settings.data_dir) / "omnipath.db")
    return Store(url, log_file_names=settings.log_file_names)


def build_chat_services(
    config: Any,
    *,
    web: WebServices | None = None,
    engine: Any = None,
    store: Any = None,
    environ: Mapping[str, str] | None = None,
) -> ChatServices:
    """All chat parts from `config` (a WebConfig); pass `web`, `engine` or `store` to reuse
    ones already built (tests inject a tiny engine and a temporary database)."""
    settings = ChatSettings.from_config(config, environ)
    if web is None:
        web = build_services(config)
    if engine is None:
        engine = build_engine(settings)
    if store is None:
        store = build_store(settings)
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    return ChatServices(web=web, engine=engine, store=store, settings=settings)


def replace_settings(services: ChatServices, **changes: Any) -> ChatServices:
    """A copy of `services` with some settings changed (tests: a small upload limit)."""
    return dataclasses.replace(services, settings=dataclasses.replace(services.settings, **changes))
