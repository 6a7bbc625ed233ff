"""Shared pytest fixtures.

- `shared_fixtures`: the openslide-python test files in ../shared/fixtures next to the repo
  (small.svs, boxes.tiff, boxes_0.dcm, boxes.png); tests that use it skip when it is absent.
- `synthetic_slide`: one small synthetic H&E slide (4096×3072, 3 lesions, JPEG) per session.
- `tissue_png`: a 1200×800 PNG with tissue on its left (no imagecodecs needed).
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "openslide-python"


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"shared slide fixtures not found at {SHARED_FIXTURES}")
    return SHARED_FIXTURES


@pytest.fixture(scope="session")
def synthetic_slide(tmp_path_factory: pytest.TempPathFactory):
    """A SyntheticSlide (omnipath.synth) written once per test session; read-only."""
    from omnipath.synth import write_synthetic_slide

    folder = tmp_path_factory.mktemp("synthetic_slide")
    return write_synthetic_slide(folder / "synthetic.tiff", 4096, 3072, seed=0, n_lesions=3)


@pytest.fixture
def tissue_png(tmp_path: Path) -> tuple[Path, int]:
    """(path, tissue_right): a 1200×800 H&E-like PNG slide, pink tissue with purple nuclei left
    of x = tissue_right (500), glass to the right."""
    from PIL import Image, ImageDraw

    width, height, tissue_right = 1200, 800, 500
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, tissue_right - 1, height - 1), fill=(225, 140, 185))
    for i in range(0, tissue_right - 8, 12):
        for j in range(0, height - 8, 12):
            draw.ellipse((i, j, i + 6, j + 6), fill=(110, 50, 140))
    path = tmp_path / "tissue.png"
    image.save(path)
    return path, tissue_right


@pytest.fixture(scope="module")
def tiny_engine():
    """The app's engine (web.chat_services.build_engine) on the tiny random-weight model."""
    from web.chat_services import build_engine
    from web.config import WebConfig

    return build_engine(WebConfig(model="tiny"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` skip, with the reason, where no CUDA device is visible."""
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is visible on this machine")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
