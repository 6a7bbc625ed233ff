"""Deep-zoom routes on real (synthetic) slides opened through omnipath.slide: DZI content, tile
pixels, every 404, ICC → sRGB, the LRU of open slides and the cache under concurrent requests."""

from __future__ import annotations

import io
import random
import struct
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from omnipath.coords import dz_tile_to_l0
from omnipath.errors import NotFoundError
from omnipath.slide import content_hash, open_slide
from omnipath.synth import write_synthetic_slide
from tests.live_server import free_port, running_server
from tests.threads import run_together
from web import tiles as tiles_module
from web.slide_registry import SlideRegistry
from web.tile_cache import TileCache
from web.tile_routes import TileCacheFastPath, tile_router
from web.tiles import TileService

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "openslide-python"


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("slides")
    return [
        write_synthetic_slide(folder / f"slide{seed}.tiff", 1000, 700, seed=seed).path
        for seed in (1, 2)
    ]


def _service(max_open: int = 4, cache_bytes: int = 64 * 2**20) -> TileService:
    return TileService(SlideRegistry(max_open), TileCache(cache_bytes))


def _everyone(request: object, slide_id: str) -> bool:
    return True


def _app(service: TileService, may_see=_everyone) -> FastAPI:
    """The deep-zoom routes with the tile-cache fast path, as web.app mounts them."""
    app = FastAPI()
    app.include_router(tile_router(service, may_see))
    app.add_middleware(TileCacheFastPath, service=service, may_see=may_see)
    return app


def _client(service: TileService) -> TestClient:
    return TestClient(_app(service))


def test_dzi_describes_the_slide(slides: list[Path]) -> None:
    service = _service()
    slide_id = service.registry.register(slides[0])
    response = _client(service).get(f"/slides/{slide_id}.dzi")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(response.text)
    assert root.tag.endswith("Image")
    assert (root.get("TileSize"), root.get("Overlap"), root.get("Format")) == ("254", "1", "jpeg")
    size = next(iter(root))
    assert (size.get("Width"), size.get("Height")) == ("1000", "700")


def test_a_tile_shows_the_slide_region_it_claims(slides: list[Path]) -> None:
    service = _service()
    slide_id = service.registry.register(slides[0])
    client = _client(service)
    top = 10  # ceil(log2(1000)): the full-resolution deep-zoom level
    response = client.get(f"/slides/{slide_id}_files/{top}/1_1.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert "immutable" in response.headers["cache-control"]
    tile = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=np.int16)
    rect = dz_tile_to_l0(top, 1, 1, l0_width=1000, l0_height=700)
    assert tile.shape == (rect.h, rect.w, 3)
    with open_slide(slides[0]) as slide:
        expected = np.asarray(slide.read_l0_region(rect, (rect.w, rect.h)), dtype=np.int16)
    assert np.abs(tile - expected).mean() < 2.0  # lossless tile vs the same region read directly
    assert tile.std() > 5  # not a blank tile


def test_a_slide_the_asker_may_not_see_is_a_404_like_a_missing_one(slides: list[Path]) -> None:
    service = _service()
    slide_id = service.registry.register(slides[0])
    tile = f"/slides/{slide_id}_files/10/0_0.jpeg"
    assert _client(service).get(tile).status_code == 200  # now in the cache
    asked: list[str] = []

    def only_cookie_holders(request, asked_id: str) -> bool:
        asked.append(asked_id)
        return request.cookies.get("who") == "owner"

    client = TestClient(_app(service, only_cookie_holders))
    missing = client.get(f"/slides/{'e' * 64}.dzi")
    for path in (f"/slides/{slide_id}.dzi", tile, f"/slides/{slide_id}_files/10/1_0.jpeg"):
        refused = client.get(path)  # the cached tile too: the fast path asks first
        assert (refused.status_code, refused.json()) == (404, missing.json()), path
    client.cookies.set("who", "owner")
    assert client.get(tile).status_code == 200 and client.get(f"/slides/{slide_id}.dzi").is_success
    assert set(asked) == {slide_id, "e" * 64}


def test_jpeg_tiles_and_the_one_pixel_level(slides: list[Path]) -> None:
    service = _service()
    slide_id = service.registry.register(slides[0])
    client = _client(service)
    first = client.get(f"/slides/{slide_id}_files/0/0_0.jpeg")
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(first.content)).size == (1, 1)
    again = client.get(f"/slides/{slide_id}_files/0/0_0.jpeg")  # served by the cache fast path
    assert again.content == first.content and "immutable" in again.headers["cache-control"]
    assert service.cache.stats().hits >= 1


@pytest.mark.parametrize(
    "path",
    [
        "/slides/{unknown}.dzi",
        "/slides/{unknown}_files/0/0_0.jpeg",
        "/slides/{id}_files/11/0_0.jpeg",  # level beyond the last
        "/slides/{id}_files/99999/0_0.jpeg",
        "/slides/{id}_files/10/4_0.jpeg",  # column beyond the last (1000 px = 4 tiles: 0..3)
        "/slides/{id}_files/10/0_3.jpeg",  # row beyond the last
        "/slides/{id}_files/10/-1_0.jpeg",
        "/slides/{id}_files/x/0_0.jpeg",
        "/slides/{id}_files/10/0_0.gif",
        "/slides/{id}_files/10/0_0",
        "/slides/{ID}.dzi",  # upper-case hex is not an id
        "/slides/../etc/passwd",
        "/slides/..%2f..%2fetc%2fpasswd.dzi",
        "/slides/%2e%2e_files/0/0_0.jpeg",
        "/slides/%2e%2e%2f%2e%2e%2fetc%2fpasswd_files/0/0_0.jpeg",
        "/slides/%2Fetc%2Fpasswd.dzi",
        "/slides//etc/passwd.dzi",
        "/slides/{path}.dzi",
    ],
)
def test_bad_ids_levels_addresses_and_path_like_ids_get_404(slides: list[Path], path: str) -> None:
    service = _service()
    slide_id = service.registry.register(slides[0])
    url = path.format(unknown="0" * 64, id=slide_id, ID=slide_id.upper(), path=str(slides[0]))
    response = _client(service).get(url)
    assert response.status_code == 404
    assert "Traceback" not in response.text


@pytest.mark.parametrize(
    "level, name",
    [
        ("010", "1_1.jpeg"),  # leading zeros
        ("0010", "1_1.jpeg"),
        ("10", "01_1.jpeg"),
        ("10", "1_001.jpeg"),
        ("+10", "1_1.jpeg"),
        ("\u0661\u0660", "1_1.jpeg"),  # Arabic-Indic "10"
        ("\uff11\uff10", "1_1.jpeg"),  # fullwidth "10"
        ("10", "\u0661_1.jpeg"),
        ("10", "1_\uff11.jpeg"),
        ("\U0001d7cf\U0001d7ce", "1_1.jpeg"),  # mathematical bold "10"
    ],
)
def test_a_tile_has_one_address_other_spellings_get_the_plain_404(
    slides: list[Path], level: str, name: str
) -> None:
    """Only canonical ASCII numbers name a tile, in the route and in the cache fast path alike:
    asked before and after the canonical tile is cached, another spelling is a 404."""
    service = _service()
    slide_id = service.registry.register(slides[0])
    client = _client(service)
    plain_404 = client.get(f"/slides/{slide_id}_files/10/x_1.jpeg")
    other = f"/slides/{slide_id}_files/{level}/{name}"
    cold = client.get(other)
    assert client.get(f"/slides/{slide_id}_files/10/1_1.jpeg").status_code == 200
    assert service.cached_tile(slide_id, 10, 1, 1, "jpeg") is not None
    warm = client.get(other)
    for response in (cold, warm):
        assert response.status_code == 404
        assert response.json() == plain_404.json()


@pytest.mark.parametrize("bad_id", ["../slide0", "%2e%2e", "/etc/passwd", "", "0" * 64])
def test_the_service_refuses_path_like_and_unknown_ids(slides: list[Path], bad_id: str) -> None:
    service = _service()
    service.registry.register(slides[0])
    with pytest.raises(NotFoundError):
        service.dzi(bad_id)
    with pytest.raises(NotFoundError):
        service.tile(bad_id, 0, 0, 0, "jpeg")


def test_a_slide_whose_file_was_removed_gets_404(tmp_path: Path) -> None:
    path = write_synthetic_slide(tmp_path / "gone.tiff", 300, 200, seed=7).path
    service = _service()
    slide_id = service.registry.register(path)
    path.unlink()
    response = _client(service).get(f"/slides/{slide_id}_files/8/0_0.jpeg")
    assert response.status_code == 404
    assert "no longer on the server" in response.json()["error"]


def test_a_damaged_tile_is_a_readable_500_and_the_rest_of_the_slide_still_works(
    tmp_path: Path,
) -> None:
    import tifffile

    path = write_synthetic_slide(tmp_path / "damaged.tiff", 1000, 700, seed=1).path
    with tifffile.TiffFile(path) as tiff:  # level 0, tile 5 = row 1, column 1 (256 px tiles)
        offset, count = tiff.pages[0].dataoffsets[5], tiff.pages[0].databytecounts[5]
    with open(path, "r+b") as file:
        file.seek(offset + count // 3)
        file.write(b"\0" * (count // 3))
    service = _service()
    slide_id = service.registry.register(path)
    client = _client(service)
    for _ in range(2):  # not cached, and the same answer each time
        damaged = client.get(f"/slides/{slide_id}_files/10/1_1.jpeg")
        assert damaged.status_code == 500
        assert "damaged" in damaged.json()["error"] and "Traceback" not in damaged.text
        assert client.get(f"/slides/{slide_id}_files/10/0_0.jpeg").status_code == 200


def test_only_max_open_slides_stay_open(slides: list[Path]) -> None:
    service = _service(max_open=1)
    first, second = (service.registry.register(path) for path in slides)
    client = _client(service)
    assert client.get(f"/slides/{first}_files/9/0_0.jpeg").status_code == 200
    assert service.registry.open_ids() == [first]
    assert client.get(f"/slides/{second}_files/9/0_0.jpeg").status_code == 200
    assert service.registry.open_ids() == [second]
    assert client.get(f"/slides/{first}_files/9/1_0.jpeg").status_code == 200  # reopened
    assert service.registry.open_ids() == [first]


def test_concurrent_requests_across_two_slides_get_the_right_bytes(slides: list[Path]) -> None:
    # One slide open at a time and a cache smaller than the tiles: every thread forces
    # evictions of both, while the others read.
    reference = _service()
    ids = [reference.registry.register(path) for path in slides]
    addresses = [
        (slide_id, 10, col, row) for slide_id in ids for col in range(4) for row in range(3)
    ]
    expected = {address: reference.tile(*address, "jpeg") for address in addresses}
    service = _service(max_open=1, cache_bytes=sum(map(len, expected.values())) // 3)
    for path in slides:
        service.registry.register(path)
    errors: list[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(40):
            address = rng.choice(addresses)
            try:
                if service.tile(*address, "jpeg") != expected[address]:
                    errors.append(f"wrong bytes for {address}")
            except Exception as exc:  # noqa: BLE001 - any failure under concurrency is the bug
                errors.append(repr(exc))

    run_together(worker, 8)
    assert errors == []
    stats = service.cache.stats()
    assert stats.bytes <= stats.max_bytes and stats.evictions > 0
    assert len(service.registry.open_ids()) == 1


# --- colour ------------------------------------------------------------------------


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz_tag(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + b"\0" * 4 + _s15(x) + _s15(y) + _s15(z)


def swapped_red_blue_profile() -> bytes:
    """A valid ICC v2 RGB display profile whose red and blue primaries are sRGB's blue and red
    (D50-adapted) with gamma 2.2: pure red in this space is pure blue in sRGB."""
    description = b"OmniPath test: red and blue swapped\0"
    desc = (
        b"desc" + b"\0" * 4 + struct.pack(">I", len(description)) + description
        + struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + b"\0" * 67
    )  # fmt: skip
    curve = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(2.2 * 256)) + b"\0\0"
    tags = [
        (b"desc", desc),
        (b"cprt", b"text" + b"\0" * 4 + b"none\0"),
        (b"wtpt", _xyz_tag(0.9642, 1.0, 0.8249)),
        (b"rXYZ", _xyz_tag(0.1431, 0.0606, 0.7141)),  # sRGB's blue
        (b"gXYZ", _xyz_tag(0.3851, 0.7169, 0.0971)),
        (b"bXYZ", _xyz_tag(0.4361, 0.2225, 0.0139)),  # sRGB's red
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    header = (
        struct.pack(">I", offset + len(data)) + b"\0" * 4 + struct.pack(">I", 0x02100000)
        + b"mntrRGB XYZ " + b"\0" * 12 + b"acsp" + b"\0" * 28
        + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + b"\0" * 48
    )  # fmt: skip
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def _red_image(path: Path, icc_profile: bytes | None) -> Path:
    image = Image.new("RGB", (300, 200), (255, 0, 0))
    image.save(path, "PNG", **({"icc_profile": icc_profile} if icc_profile else {}))
    return path


def _top_left_pixel(client: TestClient, slide_id: str) -> tuple[int, ...]:
    response = client.get(
        f"/slides/{slide_id}_files/9/0_0.png"
    )  # 300 px wide: level 9 is full size
    assert response.status_code == 200
    image = Image.open(io.BytesIO(response.content))
    assert "icc_profile" not in image.info  # sRGB pixels, untagged: what browsers assume
    return image.convert("RGB").getpixel((10, 10))


def test_tiles_are_converted_to_srgb_from_the_slides_icc_profile(tmp_path: Path) -> None:
    tagged = _red_image(tmp_path / "tagged.png", swapped_red_blue_profile())
    with open_slide(tagged) as slide:
        assert slide.icc_profile is not None, "the slide layer should expose the PNG's profile"
    service = _service()
    client = _client(service)
    red, green, blue = _top_left_pixel(client, service.registry.register(tagged))
    assert blue > 200 and red < 40 and green < 40  # red in the slide's space is blue in sRGB


def test_tiles_without_a_profile_are_left_as_they_are(tmp_path: Path) -> None:
    plain = _red_image(tmp_path / "plain.png", None)
    service = _service()
    assert _top_left_pixel(_client(service), service.registry.register(plain)) == (255, 0, 0)


def test_the_srgb_transform_is_built_once_per_open_slide(tmp_path: Path, monkeypatch) -> None:
    tagged = _red_image(tmp_path / "tagged.png", swapped_red_blue_profile())
    builds: list[int] = []
    original = tiles_module.srgb_transform

    def counting(profile: bytes | None):
        builds.append(1)
        return original(profile)

    monkeypatch.setattr(tiles_module, "srgb_transform", counting)
    service = _service()
    slide_id = service.registry.register(tagged)
    for level, col, row in ((9, 0, 0), (9, 1, 0), (8, 0, 0)):
        service.tile(slide_id, level, col, row, "jpeg")
    assert len(builds) == 1


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="../shared/fixtures is absent")
def test_a_vendor_slide_with_an_icc_profile_is_served(tmp_path: Path) -> None:
    boxes = FIXTURES / "boxes.tiff"  # generic-tiff with an embedded ICC profile
    service = _service()
    slide_id = service.registry.register(boxes)
    assert slide_id == content_hash(boxes)
    client = _client(service)
    assert client.get(f"/slides/{slide_id}.dzi").status_code == 200
    response = client.get(f"/slides/{slide_id}_files/9/0_0.jpeg")
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.content)).size == (255, 250)


def test_a_tile_being_rendered_does_not_hold_up_other_requests(slides: list[Path]) -> None:
    """Rendering runs in the threadpool: while one render is stuck, the event loop still
    answers other requests (a blocking handler would deadlock this test until the timeout)."""
    import http.client

    service = _service()
    slide_id = service.registry.register(slides[0])
    release, rendering = threading.Event(), threading.Event()
    encode = service._encode

    def stuck_encode(*args, **kwargs):
        if not release.is_set():
            rendering.set()
            release.wait(60)
        return encode(*args, **kwargs)

    service._encode = stuck_encode
    port = free_port()

    def get(path: str) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", path)
        status = connection.getresponse().status
        connection.close()
        return status

    with running_server(_app(service), port):
        try:
            statuses: list[int] = []
            blocked = threading.Thread(
                target=lambda: statuses.append(get(f"/slides/{slide_id}_files/10/0_0.jpeg"))
            )
            blocked.start()
            assert rendering.wait(30), "the first tile never started rendering"
            assert get(f"/slides/{slide_id}.dzi") == 200  # answered while the render is stuck
            assert get(f"/slides/{'0' * 64}.dzi") == 404
            assert statuses == []  # the stuck request is indeed still waiting
            release.set()
            blocked.join(30)
            assert statuses == [200]
        finally:
            release.set()
