"""omnipath/facts.py: the facts web/, storage/ and the model share, stated once and agreeing."""

from __future__ import annotations

import hashlib

import pytest

from omnipath.facts import PGDFC_MODES, is_demo_model, is_slide_id
from storage import Store
from storage.errors import InvalidRecordError
from web.config import WebConfig


def test_a_slide_id_is_a_sha256_digest_everywhere(tmp_path) -> None:
    digest = hashlib.sha256(b"slide").hexdigest()
    assert is_slide_id(digest)
    short = digest[:32]  # the log accepted 16..128 hex digits before; the registry only 64
    assert not is_slide_id(short) and not is_slide_id(digest + "0") and not is_slide_id(None)
    store = Store(str(tmp_path / "log.db"))
    with pytest.raises(InvalidRecordError):
        store.record_slide(short, size_bytes=1, vendor="image", width=8, height=8)
    store.record_slide(digest, size_bytes=1, vendor="image", width=8, height=8)


def test_the_demo_rule_and_modes_are_the_shared_ones() -> None:
    assert is_demo_model("OmniPath-Mini") and is_demo_model("tiny")
    assert not is_demo_model("microsoft/phi-3-mini")
    assert WebConfig(model="org/omnipath-mini-v2").demo_model
    assert PGDFC_MODES == ("attention", "random", "off")


def test_requirements_hold_the_app_and_the_test_tools_are_pinned_apart() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent

    def pins(name: str) -> dict[str, str]:
        lines = (root / name).read_text().splitlines()
        return dict(line.lower().split("==") for line in lines if "==" in line)

    app, test = pins("requirements.txt"), pins("requirements-test.txt")
    for tool in ("pytest", "pytest-xdist", "pytest-timeout", "selenium", "ruff", "trio"):
        assert tool in test and tool not in app
    assert "gradio" in app and not set(app) & set(test)
    assert "requirements-test.txt" in (root / ".ci" / "install.sh").read_text()
