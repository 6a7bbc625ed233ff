"""The web app's configuration: defaults, then OMNIPATH_* environment variables, then CLI flags.

Each later source overrides the earlier one field by field. Bad values raise ConfigError with
a sentence that names the setting and where it came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from omnipath.errors import OmniPathError
from omnipath.facts import DTYPE_NAMES, QUANTIZATIONS, is_demo_model

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024**3


class ConfigError(OmniPathError):
    """A configuration value (environment variable or command-line flag) is invalid."""


@dataclass(frozen=True)
class WebConfig:
    """Everything `python -m web` needs to start the app."""

    host: str = "127.0.0.1"
    port: int = 7860
    data_dir: Path = Path("data")
    # Slides kept open at once; the least recently used one is closed beyond this.
    max_open_slides: int = 8
    # Encoded tiles kept in memory, in bytes (least recently used evicted first).
    tile_cache_bytes: int = 256 * 1024 * 1024
    jpeg_quality: int = 80
    # A slide to open at start instead of the generated sample slide.
    slide: Path | None = None
    # The sample slide, generated into data_dir on first start when absent.
    sample_slide: bool = True
    sample_width: int = 16384
    sample_height: int = 12288
    sample_seed: int = 0
    # The model: "mini" (the embedded omnipath-mini, a demonstration), "tiny" (random
    # weights, for tests), a folder, or a hub id.
    model: str = "mini"
    model_dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    quantization: str | None = None  # None | 4bit | 8bit
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Chat template for the model (original-LLaVA conversation names); None: the checkpoint's.
    conversation: str | None = None
    # Whether the banner labels the model a demonstration; None: decided from the model id.
    model_is_demo: bool | None = None
    # SQLAlchemy URL of the session log; None: SQLite at <data_dir>/omnipath.db.
    database_url: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    # Uploaded file names are logged only when asked: they can identify patients.
    log_file_names: bool = False
    # Answers generated at once; more wait in Gradio's queue.
    max_concurrent_answers: int = 8
    # Requests waiting in Gradio's queue (questions beyond max_concurrent_answers, uploads);
    # one more is refused with a sentence ("busy, try again").
    max_queued_questions: int = 64
    # Serve Gradio's API schema (/openapi.json) and queue monitoring summary; both need no login.
    expose_api_docs: bool = False
    # Who is asking (web/identity.py): "none" (one local user), "file" (logins from
    # auth_file) or "hf" (Hugging Face sign-in on a Space with `hf_oauth: true`); None: "file"
    # when auth_file is given, else "none".
    auth: str | None = None
    auth_file: Path | None = None
    # Anonymous visitors, each with a private space (a signed cookie); needed to listen on a
    # non-loopback address without logins.
    public_demo: bool = False
    # Days a public demo visitor's cookie lasts.
    anonymous_keep_days: int = 7

    @property
    def auth_mode(self) -> str:
        """The mode: "users" (logins), "hf" (Hugging Face sign-in), "public-demo" (anonymous
        private spaces) or "none"."""
        if self.auth == "hf":
            return "hf"
        if self.auth_file is not None:
            return "users"
        return "public-demo" if self.public_demo else "none"

    @property
    def demo_model(self) -> bool:
        """True when answers come from a demonstration model (said so in the banner)."""
        if self.model_is_demo is not None:
            return self.model_is_demo
        return is_demo_model(self.model)

    @property
    def uploads_dir(self) -> Path:
        return Path(self.data_dir) / "slides"

    @property
    def exports_dir(self) -> Path:
        return Path(self.data_dir) / "exports"


# The settings that can come from outside, in --help order: field name -> help text. Each is
# read from the environment variable OMNIPATH_<NAME> and the flag --<name-with-dashes>, except
# the switches below.
_SETTINGS: dict[str, str | None] = {
    "host": "interface to listen on (default 127.0.0.1)",
    "port": "port to listen on (default 7860)",
    "data_dir": "where the sample slide and data live",
    "max_open_slides": None,
    "tile_cache_bytes": None,
    "jpeg_quality": None,
    "slide": "open this slide at start instead of the sample slide",
    "sample_slide": "do not generate or open the sample slide",
    "model": "mini (default, the embedded demonstration model), tiny, a model folder or a hub id",
    "model_dtype": ", ".join(DTYPE_NAMES),
    "quantization": "4bit or 8bit (default none)",
    "device": "auto (default), cpu, cuda or cuda:N",
    "conversation": "chat template: vicuna_v1, llava_v1, mistral_instruct or llama_3 "
    "(default: the checkpoint's own)",
    "model_is_demo": "true/false: label the model a demonstration (default: from the model id)",
    "database_url": "SQLAlchemy URL of the log",
    "max_upload_bytes": None,
    "log_file_names": "keep uploaded file names in the log (they can identify patients)",
    "max_concurrent_answers": None,
    "max_queued_questions": "requests waiting their turn before more are refused (default 64)",
    "expose_api_docs": "serve Gradio's /openapi.json and /monitoring pages (they need no login)",
    "auth": "none (one local user, the default), file (logins from --auth-file) or hf "
    "(Hugging Face sign-in on a Space with hf_oauth: true)",
    "auth_file": "users.toml of `python -m web.users`: users log in and see only their own data",
    "public_demo": "anonymous visitors, each with a private space (a signed cookie)",
    "anonymous_keep_days": "days a public demo visitor's space lasts (default 7)",
}
# Flags that take no value: field name -> (flag, the value it sets).
_SWITCHES = {
    "sample_slide": ("--no-sample-slide", "false"),
    "log_file_names": ("--log-file-names", "true"),
    "expose_api_docs": ("--expose-api-docs", "true"),
    "public_demo": ("--public-demo", "true"),
}


def _env_name(name: str) -> str:
    return f"OMNIPATH_{name.upper()}"


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _convert(name: str, raw: str, source: str) -> object:
    field_type = {f.name: f.type for f in dataclasses.fields(WebConfig)}[name]
    try:
        if field_type == "int":
            value: object = int(raw)
        elif field_type in ("bool", "bool | None"):
            lowered = raw.strip().lower()
            if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                raise ValueError(raw)
            value = lowered in {"1", "true", "yes", "on"}
        elif field_type in ("Path", "Path | None"):
            value = Path(raw) if raw else None
        elif field_type == "str | None":
            value = raw.strip() or None
        else:
            value = raw
    except ValueError:
        raise ConfigError(
            f"The setting {name} from {source} has an invalid value: {raw!r}."
        ) from None
    return value


def _validate(config: WebConfig) -> WebConfig:
    if not 0 < config.port < 65536:
        raise ConfigError(f"The port must be between 1 and 65535, not {config.port}.")
    if config.max_open_slides < 1:
        raise ConfigError("At least one slide must be allowed open (max_open_slides >= 1).")
    if config.tile_cache_bytes < 0:
        raise ConfigError("The tile cache size cannot be negative.")
    if not 1 <= config.jpeg_quality <= 100:
        raise ConfigError(f"The JPEG quality must be between 1 and 100, not {config.jpeg_quality}.")
    if config.data_dir is None:
        raise ConfigError("The data directory cannot be empty.")
    if not config.model.strip():
        raise ConfigError(
            "The model cannot be empty; use mini for the embedded demonstration model."
        )
    if config.model_dtype not in DTYPE_NAMES:
        raise ConfigError(
            f"The model precision must be one of {', '.join(DTYPE_NAMES)}, not {config.model_dtype!r}."
        )
    if config.quantization is not None and config.quantization not in QUANTIZATIONS:
        raise ConfigError(
            f"The quantization must be 4bit or 8bit (or empty), not {config.quantization!r}."
        )
    if config.max_upload_bytes < 1:
        raise ConfigError("The upload size limit (max_upload_bytes) must be positive.")
    if config.max_concurrent_answers < 1:
        raise ConfigError(
            "At least one answer must be allowed at a time (max_concurrent_answers >= 1)."
        )
    if config.max_queued_questions < 1:
        raise ConfigError(
            "At least one request must be allowed to wait its turn (max_queued_questions >= 1)."
        )
    if config.auth not in (None, "none", "file", "hf"):
        raise ConfigError(f"The auth mode must be none, file or hf, not {config.auth!r}.")
    if config.auth == "file" and config.auth_file is None:
        raise ConfigError("--auth file needs --auth-file users.toml (python -m web.users add).")
    if config.auth == "none" and config.auth_file is not None:
        raise ConfigError("--auth none and --auth-file contradict each other; choose one.")
    if config.auth == "hf" and config.auth_file is not None:
        raise ConfigError("--auth hf and --auth-file contradict each other; choose one.")
    if config.auth == "hf" and config.public_demo:
        raise ConfigError(
            "--public-demo is for anonymous visitors; it cannot go with Hugging Face sign-in."
        )
    if config.auth_file is not None and config.public_demo:
        raise ConfigError("--public-demo is for anonymous visitors; it cannot go with logins.")
    if config.auth_file is not None and not Path(config.auth_file).is_file():
        raise ConfigError(
            f"The users file {config.auth_file} does not exist; create it with "
            "python -m web.users add NAME."
        )
    if config.anonymous_keep_days < 1:
        raise ConfigError("Anonymous spaces must be kept at least one day.")
    return config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m web", description="Start the OmniPath app.")
    for name, help_text in _SETTINGS.items():
        if name in _SWITCHES:
            flag, value = _SWITCHES[name]
            parser.add_argument(flag, dest=name, action="store_const", const=value, help=help_text)
        else:
            parser.add_argument(_flag(name), dest=name, help=help_text)
    return parser


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> WebConfig:
    """Defaults, then OMNIPATH_* variables from `environ` (os.environ when None), then `argv`."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for name in _SETTINGS:
        env_name = _env_name(name)
        if env_name in environ:
            values[name] = _convert(name, environ[env_name], f"the environment ({env_name})")
    try:
        args = _parser().parse_args([] if argv is None else list(argv))
    except SystemExit as exc:  # argparse already printed the usage
        if exc.code == 0:
            raise
        raise ConfigError(
            "The command-line flags could not be understood (see the usage above)."
        ) from None
    for name, raw in vars(args).items():
        if raw is not None:
            values[name] = _convert(name, raw, f"the command line ({_flag(name)})")
    return _validate(dataclasses.replace(WebConfig(), **values))
