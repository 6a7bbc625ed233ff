"""The app: configuration sources, the page (viewer + chat), tiles and viewer assets on the same
server, the first start, and `python -m web`."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from fastapi.testclient import TestClient

from web.config import ConfigError, WebConfig, load_config
from web.services import build_services
from web.viewer_component import (
    ASSET_PREFIX,
    OSD_BUILD_DIR,
    mask_item,
    rect_item,
    viewer_head,
    viewer_state,
)

needs_osd = pytest.mark.skipif(
    not (OSD_BUILD_DIR / "openseadragon.min.js").is_file(),
    reason="OpenSeadragon is not installed (run `npm ci` in web/viewer or bash .ci/install.sh)",
)


def chat_services(config: WebConfig, engine):
    """The app's services around a shared tiny engine (loaded once per module)."""
    from storage import Store
    from web.chat_services import build_chat_services

    return build_chat_services(config, engine=engine, store=Store(config.data_dir / "log.db"))


def test_defaults_then_environment_then_flags() -> None:
    assert load_config([], {}) == WebConfig()
    env = {"OMNIPATH_PORT": "8000", "OMNIPATH_HOST": "0.0.0.0", "OMNIPATH_DATA_DIR": "/srv/data"}
    from_env = load_config([], env)
    assert (from_env.port, from_env.host, from_env.data_dir) == (8000, "0.0.0.0", Path("/srv/data"))
    from_flags = load_config(["--port", "9000", "--no-sample-slide"], env)
    assert from_flags.port == 9000 and from_flags.host == "0.0.0.0"
    assert from_flags.sample_slide is False


def test_the_chat_settings_are_config_fields_from_the_same_sources() -> None:
    defaults = load_config([], {})
    assert defaults.model == "mini" and defaults.demo_model and defaults.quantization is None
    assert defaults.log_file_names is False and defaults.database_url is None
    assert defaults.uploads_dir == Path("data") / "slides"
    env = {
        "OMNIPATH_MODEL": "/models/omnipath-13b",
        "OMNIPATH_QUANTIZATION": "4bit",
        "OMNIPATH_MAX_UPLOAD_BYTES": "1000",
        "OMNIPATH_LOG_FILE_NAMES": "yes",
        "OMNIPATH_DATABASE_URL": "postgresql+psycopg://db/omnipath",
    }
    from_env = load_config([], env)
    assert from_env.model == "/models/omnipath-13b" and not from_env.demo_model
    assert from_env.quantization == "4bit" and from_env.max_upload_bytes == 1000
    assert from_env.log_file_names and from_env.database_url.startswith("postgresql")
    flags = ["--model", "omnipath-mini", "--quantization", "8bit", "--max-concurrent-answers", "2"]
    from_flags = load_config(flags, env)
    assert from_flags.model == "omnipath-mini" and from_flags.demo_model
    assert from_flags.quantization == "8bit" and from_flags.max_concurrent_answers == 2
    labelled = load_config(["--model-is-demo", "true"], env)
    assert labelled.demo_model  # an explicit label wins over the model id


@pytest.mark.parametrize(
    ("argv", "env", "words"),
    [
        ([], {"OMNIPATH_PORT": "seventy"}, "OMNIPATH_PORT"),
        (["--port", "70000"], {}, "between 1 and 65535"),
        ([], {"OMNIPATH_SAMPLE_SLIDE": "maybe"}, "OMNIPATH_SAMPLE_SLIDE"),
        (["--max-open-slides", "0"], {}, "At least one slide"),
        ([], {"OMNIPATH_QUANTIZATION": "3bit"}, "4bit or 8bit"),
        (["--model-dtype", "float8"], {}, "model precision must be one of"),
        ([], {"OMNIPATH_MAX_UPLOAD_BYTES": "lots"}, "OMNIPATH_MAX_UPLOAD_BYTES"),
        (["--max-upload-bytes", "0"], {}, "must be positive"),
        ([], {"OMNIPATH_MODEL_IS_DEMO": "maybe"}, "OMNIPATH_MODEL_IS_DEMO"),
        (["--max-concurrent-answers", "0"], {}, "At least one answer"),
    ],
)
def test_bad_settings_raise_a_readable_config_error(argv: list[str], env: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_config(argv, env)


def test_viewer_state_names_the_slide_by_id_and_checks_layers() -> None:
    slide_id = "ab" * 32
    state = json.loads(
        viewer_state(
            slide_id, {"mpp_x": 0.25}, {"boxes": [rect_item({"x": 1, "y": 2, "w": 3, "h": 4}, "b")]}
        )
    )
    assert state["dzi_url"] == f"/slides/{slide_id}.dzi"
    assert state["layers"]["boxes"][0] == {
        "l0_rect": {"x": 1, "y": 2, "w": 3, "h": 4},
        "label": "b",
    }
    assert state["layers"]["regions"] == [] and state["layers"]["masks"] == []
    with pytest.raises(ValueError, match="unknown overlay layers"):
        viewer_state(slide_id, {}, {"arrows": []})
    only_layers = json.loads(
        viewer_state(None, layers={}, zoom_to={"x": 5, "y": 6, "w": 7, "h": 8})
    )
    assert "dzi_url" not in only_layers  # the open slide stays
    assert only_layers["zoom_to"] == {"x": 5, "y": 6, "w": 7, "h": 8}


def test_mask_item_is_a_transparent_png_coloured_where_true() -> None:
    import base64
    import io

    from PIL import Image

    bitmap = np.zeros((8, 10), dtype=bool)
    bitmap[2:5, 3:7] = True
    item = mask_item(bitmap, {"x": 0, "y": 0, "w": 100, "h": 80}, color=(10, 20, 30))
    png = base64.b64decode(item["src"].split(",", 1)[1])
    image = np.asarray(Image.open(io.BytesIO(png)))
    assert image.shape == (8, 10, 4)
    assert (image[..., 3] > 0).tolist() == bitmap.tolist()
    assert tuple(image[3, 4, :3]) == (10, 20, 30)


@pytest.mark.slow
def test_build_demo_is_the_whole_product_built_from_the_config(tmp_path: Path) -> None:
    """Nothing injected: the default model (the embedded omnipath-mini) is loaded offline, the
    log is created in the data dir."""
    from web.app import build_demo

    config = WebConfig(data_dir=tmp_path, sample_slide=False)
    demo = build_demo(config)
    assert isinstance(demo, gr.Blocks)
    props = [c.get("props", {}) for c in demo.config["components"]]
    ids = {p.get("elem_id") for p in props}
    assert {"omnipath-viewer", "omnipath-chat", "omnipath-upload", "omnipath-model-banner"} <= ids
    banner = next(p["value"] for p in props if p.get("elem_id") == "omnipath-model-banner")
    assert "`omnipath-mini`" in banner and "Demonstration model" in banner
    assert (tmp_path / "omnipath.db").is_file()
    demo.omnipath_services.store.close()


@needs_osd
def test_the_server_serves_the_page_the_viewer_assets_and_404s_unknown_slides(
    tmp_path: Path, tiny_engine
) -> None:
    from web.app import create_app

    config = WebConfig(data_dir=tmp_path, sample_slide=False)
    app = create_app(config, chat_services(config, tiny_engine))
    with TestClient(app) as client:
        page = client.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert "omnipath-chat" in page.text and "not connected" not in page.text
        osd = client.get(f"{ASSET_PREFIX}/openseadragon/openseadragon.min.js")
        assert osd.status_code == 200 and "OpenSeadragon" in osd.text
        viewer_js = client.get(f"{ASSET_PREFIX}/viewer.js")
        assert viewer_js.status_code == 200 and "window.omnipathViewer" in viewer_js.text
        assert client.get(f"{ASSET_PREFIX}/viewer.css").status_code == 200
        assert client.get(f"{ASSET_PREFIX}/openseadragon/images/home_rest.png").status_code == 200
        assert client.get(f"/slides/{'0' * 64}.dzi").status_code == 404


def test_viewer_head_loads_openseadragon_before_the_viewer_from_this_server() -> None:
    head = viewer_head()
    assert head.index("openseadragon.min.js") < head.index("viewer.js")
    assert "http://" not in head and "https://" not in head  # works offline: nothing from a CDN


def test_first_start_generates_the_sample_slide_once_and_registers_it(tmp_path: Path) -> None:
    from omnipath.slide import content_hash
    from web.sample import sample_slide_path
    from web.services import register_initial_slide

    config = WebConfig(data_dir=tmp_path, sample_width=600, sample_height=400, sample_seed=5)
    services = build_services(config)
    slide_id = register_initial_slide(services, config)
    path = sample_slide_path(tmp_path, 600, 400, 5)
    assert path.is_file() and slide_id == content_hash(path)
    leftovers = [p for p in (*tmp_path.iterdir(), *path.parent.iterdir()) if "partial" in p.name]
    assert leftovers == []
    modified = path.stat().st_mtime_ns
    again = build_services(config)
    assert register_initial_slide(again, config) == slide_id  # reused, not regenerated
    assert path.stat().st_mtime_ns == modified


@needs_osd
def test_the_app_serves_tiles_of_the_slide_it_was_started_with(tmp_path: Path, tiny_engine) -> None:
    from omnipath.synth import write_synthetic_slide
    from web.app import create_app

    slide = write_synthetic_slide(tmp_path / "start.tiff", 800, 600, seed=6)
    config = WebConfig(data_dir=tmp_path, slide=slide.path, sample_slide=False)
    services = chat_services(config, tiny_engine)
    app = create_app(config, services)
    slide_id = services.web.initial_slide_id
    assert slide_id is not None  # create_app registered the --slide
    with TestClient(app) as client:
        assert client.get(f"/slides/{slide_id}.dzi").status_code == 200
        first = client.get(f"/slides/{slide_id}_files/10/0_0.jpeg")
        second = client.get(f"/slides/{slide_id}_files/10/0_0.jpeg")  # the cache fast path
        assert first.status_code == second.status_code == 200
        assert first.content == second.content and first.content[:2] == b"\xff\xd8"


def test_python_m_web_reports_bad_flags_without_a_traceback(capsys) -> None:
    from web.__main__ import main

    assert main(["--port", "not-a-port"]) == 2
    err = capsys.readouterr().err
    assert "could not start" in err and "Traceback" not in err
    assert main(["--quantization", "3bit"]) == 2
    err = capsys.readouterr().err
    assert "4bit or 8bit" in err and "Traceback" not in err
