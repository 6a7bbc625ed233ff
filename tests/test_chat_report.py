"""The HTML report: snapshots draw each answer's overlays where they lie on the slide."""

from __future__ import annotations

import base64
import io
import re
from datetime import UTC, datetime

import numpy as np
from PIL import Image

from web.report import conversation_report, snapshot

L0_W, L0_H = 2000, 1000


def _mask_png() -> bytes:
    bitmap = np.zeros((10, 10), dtype=np.uint8)
    bitmap[:, :5] = 255  # left half of the mask's rectangle
    buffer = io.BytesIO()
    Image.fromarray(bitmap, "L").save(buffer, "PNG")
    return buffer.getvalue()


def _turn(index: int, role: str, text: str, **extra) -> dict:
    base = {
        "id": f"t{index}",
        "index": index,
        "role": role,
        "text": text,
        "regions": [],
        "boxes": [],
        "masks": [],
        "meta": {},
        "error": None,
        "timings": {},
        "tokens": {},
        "pgdfc_mode": None,
        "s": None,
        "model_id": "tiny",
        "revision": None,
    }
    return {**base, **extra}


def _answer() -> dict:
    return _turn(
        1,
        "assistant",
        "A lesion <b>here</b>.",
        regions=[{"rank": 1, "score": 0.5, "l0_rect": [1000, 0, 500, 500]}],
        boxes=[{"rel": [0.0, 0.5, 0.25, 1.0], "l0_rect": [0, 500, 500, 500], "label": "tumor"}],
        masks=[
            {
                "index": 0,
                "l0_rect": [1000, 500, 1000, 500],
                "width": 10,
                "height": 10,
                "label": None,
                "png": _mask_png(),
            }
        ],
        pgdfc_mode="attention",
        s=1,
        timings={"decode": 0.5},
        tokens={"generated": 4},
    )


def test_snapshot_draws_masks_boxes_and_regions_in_place() -> None:
    white = Image.new("RGB", (200, 100), (255, 255, 255))
    image = np.asarray(snapshot(_answer(), white, L0_W, L0_H, answer_number=1)).astype(int)
    assert image.shape == (100, 200, 3)
    # mask: translucent magenta over the left half of its rectangle (x 100..150, y 50..100)
    inside = image[75, 125]
    assert inside[1] < 200 and inside[0] > inside[1]
    assert (image[75, 175] == 255).all()  # right half of the mask rectangle stays white
    # box outline (blue) along x = 0..50 at y = 50; region outline (orange) at x = 100..150, y = 0
    assert image[50, 25][2] > image[50, 25][0]
    assert image[0, 130][0] > image[0, 130][2]
    assert (image[25, 60] == 255).all()  # nothing drawn away from the shapes


def test_report_is_self_contained_and_escapes_text() -> None:
    conversation = {
        "id": "c1",
        "title": "Where?",
        "slide_id": "ab" * 32,
        "slide": {
            "id": "ab" * 32,
            "width": L0_W,
            "height": L0_H,
            "vendor": "aperio",
            "mpp_x": 0.25,
        },
        "turns": [
            _turn(0, "user", "Where?"),
            _answer(),
            _turn(2, "user", 'And <img src="/probe.png" onerror="alert(1)">?'),
            _turn(3, "assistant", "", error="The model failed."),
        ],
        "created_at": datetime.now(UTC),
    }
    page = conversation_report(
        conversation,
        None,
        model={"model_id": "tiny", "precision": "float32", "device": "cpu", "demo": True},
    )
    assert "A lesion &lt;b&gt;here&lt;/b&gt;." in page
    assert "And &lt;img src=" in page and '<img src="/probe' not in page  # questions too
    assert "The model failed." in page and "demonstration model" in page
    uris = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(uris) == 2  # one per answer, the failed one included
    first = Image.open(io.BytesIO(base64.b64decode(uris[0])))
    assert first.size[0] / first.size[1] == L0_W / L0_H  # a stand-in of the slide's shape
    assert "<script" not in page and "https://" not in page
