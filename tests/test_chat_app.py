"""The chat Blocks: the banner, the named endpoints and the components the page needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from web.app import build_demo
from web.chat_app import banner_markdown
from web.chat_services import build_chat_services
from web.config import WebConfig


class _StubEngine:
    """Only what building the page reads (no model is run here)."""

    info = {
        "model_id": "tiny",
        "revision": None,
        "dtype": "float32",
        "device": "cpu",
        "quantization": None,
        "demo": True,
        "supports_masks": True,
    }


@pytest.fixture()
def demo(tmp_path: Path):
    from storage import Store

    config = WebConfig(data_dir=tmp_path, sample_slide=False)
    services = build_chat_services(config, engine=_StubEngine(), store=Store(tmp_path / "log.db"))
    return build_demo(config, services)


def test_named_endpoints_are_upload_ask_and_export_only(demo) -> None:
    public = {
        dep["api_name"]
        for dep in demo.config["dependencies"]
        if dep.get("api_visibility", "public") == "public" and dep.get("api_name")
    }
    assert public == {"upload", "ask", "export"}


def test_page_has_viewer_region_tool_chat_and_banner(demo) -> None:
    ids = {c.get("props", {}).get("elem_id") for c in demo.config["components"]}
    assert {
        "omnipath-viewer",
        "omnipath-region",
        "omnipath-chat",
        "omnipath-question",
        "omnipath-upload",
        "omnipath-stop",
        "omnipath-model-banner",
    } <= ids
    banner = next(
        c["props"]["value"]
        for c in demo.config["components"]
        if c.get("props", {}).get("elem_id") == "omnipath-model-banner"
    )
    assert "tiny" in banner and "float32" in banner and "cpu" in banner
    assert "Demonstration model" in banner


def test_banner_says_quantization_and_missing_masks() -> None:
    text = banner_markdown(
        {
            "model_id": "llava-hf/llava-1.5-13b-hf",
            "revision": "0123456789abcdef",
            "precision": "4bit (float16 compute)",
            "device": "cuda:0",
            "demo": False,
            "supports_masks": False,
        }
    )
    assert "4bit (float16 compute)" in text and "cuda:0" in text and "0123456789" in text
    assert "masks unavailable" in text and "Demonstration" not in text


def test_too_few_values_get_a_sentence_with_both_counts_and_the_cache_is_cleaned(demo) -> None:
    import gradio as gr

    from web.blocks import GRADIO_CACHE_CLEANUP

    functions = list(demo.fns.values())
    ask = next(f for f in functions if f.api_name == "ask")
    with pytest.raises(gr.Error) as info:
        demo.validate_inputs(ask, ["0" * 32])
    assert info.value.message == (
        "/ask takes 7 values (conversation_id, question, pgdfc_mode, s, max_new_tokens, "
        "temperature, region); the call sent 1."
    )
    page_event = next(f for f in functions if f.api_visibility == "private" and f.inputs)
    with pytest.raises(gr.Error, match="values but got 0; reload the page"):
        demo.validate_inputs(page_event, [])
    demo.validate_inputs(ask, ["0" * 32] * 7)  # enough: no error
    assert demo.delete_cache == GRADIO_CACHE_CLEANUP
