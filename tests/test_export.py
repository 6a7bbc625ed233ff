"""JSON and GeoJSON (QuPath) exports of a logged conversation, and the mask tracer."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from omnipath.errors import NotFoundError
from storage import Store, conversation_geojson, conversation_json, mask_polygons
from storage.contours import bitmap_polygons, signed_area, trace_rings
from tests import postgres

postgres_server = postgres.postgres_server
database_url = postgres.database_url

SLIDE_ID = "c0" * 32
WIDTH, HEIGHT = 2000, 1500


def _png(bitmap: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(bitmap.astype(bool)).save(buf, format="PNG")
    return buf.getvalue()


def _donut() -> np.ndarray:
    yy, xx = np.mgrid[:40, :40]
    r2 = (yy - 20) ** 2 + (xx - 20) ** 2
    return (r2 < 15**2) & (r2 >= 6**2)


def _polygon_area(polygon: list[list[list[float]]]) -> float:
    """Shoelace area of [outer, holes...] with holes subtracted (any orientation)."""

    def ring_area(ring: list[list[float]]) -> float:
        pts = np.asarray(ring)
        return abs(float(np.sum(pts[:-1, 0] * pts[1:, 1] - pts[1:, 0] * pts[:-1, 1]) / 2))

    return ring_area(polygon[0]) - sum(ring_area(h) for h in polygon[1:])


@pytest.fixture
def logged(database_url: str) -> tuple[Store, str]:
    """A conversation with two answers: regions, boxes (one partly off the slide),
    a donut mask, a two-piece mask, an empty mask, feedback, and a failed answer."""
    store = Store(database_url)
    store.record_slide(
        SLIDE_ID,
        size_bytes=99,
        vendor="aperio",
        width=WIDTH,
        height=HEIGHT,
        mpp_x=0.5,
        mpp_y=0.5,
        stored_path="/srv/slides/c0.svs",
        file_name="x.svs",
    )
    conv = store.start_conversation(SLIDE_ID, "tiny")
    two_pieces = np.zeros((10, 10), bool)
    two_pieces[1:4, 1:4] = True
    two_pieces[6:9, 5:9] = True
    store.log_turn(conv, "user", "Where is the lesion?")
    answer = store.log_turn(
        conv,
        "assistant",
        "Here.",
        pgdfc_mode="attention",
        s=2,
        regions=[
            {"rank": 1, "score": 0.61, "l0_rect": [0, 0, 250, 250]},
            {"rank": 2, "score": 0.2, "l0_rect": [1750, 1250, 250, 250]},
        ],
        boxes=[{"rel": [0.9, 0.9, 1.0, 1.0], "l0_rect": [1900, 1400, 300, 300], "label": "lesion"}],
        masks=[
            {"l0_rect": [100, 200, 400, 400], "png": _png(_donut())},
            {"l0_rect": [1000, 500, 100, 100], "bitmap": two_pieces, "label": "glands"},
            {"l0_rect": [0, 0, 10, 10], "bitmap": np.zeros((3, 3), bool)},
        ],
        timings={"decode": 0.25},
        tokens={"generated": 2},
        model_id="tiny",
    )
    store.add_feedback(answer, "like", comment="good")
    store.log_turn(conv, "user", "And the grade?")
    store.log_turn(conv, "assistant", "", error="The model timed out.")
    yield store, conv
    store.close()


def test_json_export_holds_everything_logged_and_is_json_safe(logged: tuple[Store, str]) -> None:
    store, conv = logged
    exported = json.loads(json.dumps(conversation_json(store, conv)))
    assert exported["format"] == "omnipath.conversation"
    assert exported["conversation"]["id"] == conv
    assert exported["slide"]["id"] == SLIDE_ID and exported["slide"]["mpp_x"] == 0.5
    assert "stored_path" not in exported["slide"]
    assert exported["slide"]["file_name"] is None  # not logged by default
    turns = exported["turns"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    answer = turns[1]
    assert answer["regions"][0] == {"rank": 1, "score": 0.61, "l0_rect": [0, 0, 250, 250]}
    assert answer["feedback"][0]["value"] == "like" and answer["feedback"][0]["comment"] == "good"
    assert answer["timings"] == {"decode": 0.25}
    mask = answer["masks"][0]
    decoded = Image.open(io.BytesIO(base64.b64decode(mask["png_base64"])))
    np.testing.assert_array_equal(np.asarray(decoded.convert("L")) > 127, _donut())
    assert turns[3]["error"] == "The model timed out."


def test_geojson_parses_and_stays_inside_the_slide(logged: tuple[Store, str]) -> None:
    store, conv = logged
    collection = json.loads(json.dumps(conversation_geojson(store, conv)))
    assert collection["type"] == "FeatureCollection"
    kinds = [f["properties"]["omnipath"]["kind"] for f in collection["features"]]
    assert kinds == ["region", "region", "box", "mask", "mask"]  # the empty mask has no outline
    for feature in collection["features"]:
        assert feature["type"] == "Feature"
        props = feature["properties"]
        assert props["objectType"] == "annotation"
        assert props["name"].startswith("Answer 1")
        assert isinstance(props["classification"]["name"], str)
        assert len(props["classification"]["color"]) == 3
        geometry = feature["geometry"]
        polygons = (
            [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        )
        assert geometry["type"] in ("Polygon", "MultiPolygon")
        for polygon in polygons:
            for ring in polygon:
                assert len(ring) >= 4 and ring[0] == ring[-1], "rings must be closed"
                for x, y in ring:
                    assert 0 <= x <= WIDTH and 0 <= y <= HEIGHT


def test_geojson_shapes_match_what_was_logged(logged: tuple[Store, str]) -> None:
    store, conv = logged
    features = conversation_geojson(store, conv)["features"]
    region, _, box, donut, pieces = features
    assert region["geometry"]["coordinates"] == [[[0, 0], [250, 0], [250, 250], [0, 250], [0, 0]]]
    assert "score 0.610" in region["properties"]["name"]
    # The box ran off the slide's corner: clipped to it.
    assert box["geometry"]["coordinates"] == [
        [[1900, 1400], [2000, 1400], [2000, 1500], [1900, 1500], [1900, 1400]]
    ]
    assert box["properties"]["name"].endswith("lesion")
    # The donut keeps its hole, and its area is its pixel count × (10 l0 px per bitmap px)².
    assert donut["geometry"]["type"] == "Polygon"
    assert len(donut["geometry"]["coordinates"]) == 2
    assert _polygon_area(donut["geometry"]["coordinates"]) == pytest.approx(_donut().sum() * 100)
    assert pieces["geometry"]["type"] == "MultiPolygon"
    assert len(pieces["geometry"]["coordinates"]) == 2
    assert pieces["properties"]["omnipath"]["label"] == "glands"
    # Stable ids: exporting twice gives the same features.
    assert [f["id"] for f in conversation_geojson(store, conv)["features"]] == [
        f["id"] for f in features
    ]
    only_masks = conversation_geojson(store, conv, regions=False, boxes=False)["features"]
    assert [f["properties"]["omnipath"]["kind"] for f in only_masks] == ["mask", "mask"]


def test_exports_of_unknown_conversations_raise_not_found(logged: tuple[Store, str]) -> None:
    store, _ = logged
    with pytest.raises(NotFoundError):
        conversation_json(store, "missing")
    with pytest.raises(NotFoundError):
        conversation_geojson(store, "missing")


def test_traced_polygons_cover_exactly_the_foreground_pixels() -> None:
    rng = np.random.default_rng(7)
    for _ in range(40):
        bitmap = rng.random((9, 13)) < 0.45
        polygons = bitmap_polygons(bitmap)
        covered = sum(signed_area(p[0]) + sum(signed_area(h) for h in p[1:]) for p in polygons)
        assert covered == bitmap.sum()
        for polygon in polygons:
            assert signed_area(polygon[0]) > 0
            for ring in polygon:
                assert (ring[0] == ring[-1]).all()
                corners = [tuple(p) for p in ring[:-1].tolist()]
                assert len(corners) == len(set(corners)), "rings must be simple"


def test_diagonal_pixels_are_separate_pieces_and_holes_are_found() -> None:
    assert len(bitmap_polygons(np.array([[1, 0], [0, 1]], bool))) == 2
    ring = np.zeros((5, 5), bool)
    ring[1:4, 1:4] = True
    ring[2, 2] = False
    (polygon,) = bitmap_polygons(ring)
    assert polygon[0].tolist() == [[1, 1], [4, 1], [4, 4], [1, 4], [1, 1]]
    assert signed_area(polygon[1]) == -1
    assert trace_rings(np.zeros((3, 3), bool)) == []


def test_mask_polygons_scale_into_the_l0_rect() -> None:
    bitmap = np.zeros((4, 8), bool)
    bitmap[1:3, 2:6] = True
    (polygon,) = mask_polygons(_png(bitmap), [1000, 2000, 80, 40])
    assert polygon == [
        [[1020.0, 2010.0], [1060.0, 2010.0], [1060.0, 2030.0], [1020.0, 2030.0], [1020.0, 2010.0]]
    ]


def test_turn_overlays_give_the_report_the_same_shapes_as_the_geojson(
    logged: tuple[Store, str],
) -> None:
    from storage import turn_overlays

    store, conv = logged
    loaded = store.load_conversation(conv)
    answer = loaded["turns"][1]
    overlays = turn_overlays(answer, WIDTH, HEIGHT, answer_number=1)
    features = conversation_geojson(store, conv)["features"]
    assert [o["name"] for o in overlays] == [f["properties"]["name"] for f in features]
    assert [o["details"].get("rank") for o in overlays if o["kind"] == "region"] == [1, 2]
    assert overlays[0]["polygons"] == [features[0]["geometry"]["coordinates"]]
    assert turn_overlays(loaded["turns"][3], WIDTH, HEIGHT, answer_number=2) == []


def test_export_files_writes_both_documents(logged: tuple[Store, str], tmp_path) -> None:
    from storage import export_files

    store, conv = logged
    paths = export_files(store, conv, tmp_path / "exports")
    assert json.loads(paths["json"].read_text())["conversation"]["id"] == conv
    assert json.loads(paths["geojson"].read_text())["type"] == "FeatureCollection"
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == sorted(
        [f"omnipath-{conv}.json", f"omnipath-{conv}.geojson"]
    )
