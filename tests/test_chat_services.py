"""Chat settings: config fields first, then OMNIPATH_* variables, then defaults; bad values
give a sentence."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from web.chat_services import ChatConfigError, ChatSettings


@dataclass(frozen=True)
class _Config:
    data_dir: Path = Path("somewhere")
    model: str | None = None
    max_upload_bytes: int | None = None


def test_defaults_are_the_tiny_demonstration_model() -> None:
    settings = ChatSettings.from_config(_Config(), environ={})
    assert settings.model == "tiny" and settings.model_is_demo
    assert settings.quantization is None and settings.log_file_names is False
    assert settings.uploads_dir == Path("somewhere") / "slides"


def test_environment_fills_what_the_config_leaves_open() -> None:
    environ = {
        "OMNIPATH_MODEL": "/models/omnipath-13b",
        "OMNIPATH_QUANTIZATION": "4bit",
        "OMNIPATH_MAX_UPLOAD_BYTES": "1000",
        "OMNIPATH_LOG_FILE_NAMES": "yes",
    }
    settings = ChatSettings.from_config(_Config(), environ=environ)
    assert settings.model == "/models/omnipath-13b" and not settings.model_is_demo
    assert settings.quantization == "4bit" and settings.max_upload_bytes == 1000
    assert settings.log_file_names
    from_config = ChatSettings.from_config(_Config(model="omnipath-mini"), environ=environ)
    assert from_config.model == "omnipath-mini" and from_config.model_is_demo


@pytest.mark.parametrize(
    ("environ", "phrase"),
    [
        ({"OMNIPATH_QUANTIZATION": "3bit"}, "4bit or 8bit"),
        ({"OMNIPATH_MAX_UPLOAD_BYTES": "lots"}, "whole number"),
        ({"OMNIPATH_MAX_UPLOAD_BYTES": "0"}, "must be positive"),
        ({"OMNIPATH_MODEL_IS_DEMO": "maybe"}, "true or false"),
    ],
)
def test_bad_settings_are_refused_with_a_sentence(environ: dict, phrase: str) -> None:
    with pytest.raises(ChatConfigError, match=phrase):
        ChatSettings.from_config(_Config(), environ=environ)
