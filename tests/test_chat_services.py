"""The chat's parts built from the WebConfig: upload folder, default SQLite log, the banner."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from web.chat_services import build_chat_services
from web.config import WebConfig


class _Engine:
    """Only what the banner reads (no model is run here)."""

    def __init__(self, **info) -> None:
        self.info = {"model_id": "tiny", "dtype": "float32", "device": "cpu", **info}


def test_the_log_and_uploads_live_in_the_data_dir_by_default(tmp_path: Path) -> None:
    config = WebConfig(data_dir=tmp_path / "data", sample_slide=False)
    services = build_chat_services(config, engine=_Engine())
    try:
        assert services.settings is config
        assert config.uploads_dir.is_dir() and config.uploads_dir.parent == tmp_path / "data"
        assert (tmp_path / "data" / "omnipath.db").is_file()
    finally:
        services.store.close()
        services.web.registry.close()


def test_banner_reports_quantization_and_the_demonstration_label(tmp_path: Path) -> None:
    from storage import Store

    config = WebConfig(data_dir=tmp_path, sample_slide=False, model="org/omnipath-13b")
    engine = _Engine(model_id="org/omnipath-13b", quantization="4bit", dtype="float16")
    services = build_chat_services(config, engine=engine, store=Store(tmp_path / "log.db"))
    try:
        banner = services.model_banner()
        assert banner["precision"] == "4bit (float16 compute)" and banner["demo"] is False
        labelled = dataclasses.replace(
            services, settings=dataclasses.replace(services.settings, model_is_demo=True)
        )
        assert labelled.model_banner()["demo"] is True
    finally:
        services.store.close()
