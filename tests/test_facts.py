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
