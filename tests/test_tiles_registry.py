"""The slide registry: ids → files, at most N slides open (LRU), no handle closed under a reader.

The opener is injected here so the LRU bookkeeping is tested on its own; the tile-route tests
open real synthetic slides through omnipath.slide."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from omnipath.errors import NotFoundError
from omnipath.facts import is_slide_id
from tests.threads import run_together
from web.slide_registry import SlideRegistry


class RecordingSlide:
    """Stands in for an open omnipath Slide; records whether it was closed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    paths = []
    for index in range(4):
        path = tmp_path / f"slide-{index}.bin"
        path.write_bytes(f"slide {index}".encode())
        paths.append(path)
    return paths


def _registry(max_open: int, opened: list[RecordingSlide]) -> SlideRegistry:
    def opener(path: Path) -> RecordingSlide:
        slide = RecordingSlide(path)
        opened.append(slide)
        return slide

    return SlideRegistry(max_open, opener=opener, hasher=_hash)


def test_ids_are_content_hashes_and_paths_stay_server_side(files: list[Path]) -> None:
    registry = _registry(2, [])
    slide_id = registry.register(files[0])
    assert slide_id == _hash(files[0]) and is_slide_id(slide_id)
    assert registry.path_of(slide_id) == files[0].resolve()
    assert registry.register(files[0]) == slide_id  # same content, same id


@pytest.mark.parametrize("bad", ["../etc/passwd", "%2e%2e", "/etc/passwd", "", "A" * 64, "ab" * 31])
def test_path_like_or_malformed_ids_are_not_ids(bad: str) -> None:
    assert not is_slide_id(bad)


def test_unknown_id_and_missing_file_raise_not_found(files: list[Path], tmp_path: Path) -> None:
    registry = _registry(2, [])
    with pytest.raises(NotFoundError):
        with registry.lease("0" * 64):
            pass
    with pytest.raises(NotFoundError, match="no slide file"):
        registry.register(tmp_path / "absent.svs")


def test_least_recently_used_slide_is_closed_beyond_the_limit(files: list[Path]) -> None:
    opened: list[RecordingSlide] = []
    registry = _registry(2, opened)
    ids = [registry.register(path) for path in files[:3]]
    with registry.lease(ids[0]):
        pass
    with registry.lease(ids[1]):
        pass
    with registry.lease(ids[0]):  # 0 is now more recent than 1
        pass
    with registry.lease(ids[2]):
        pass
    assert registry.open_ids() == [ids[0], ids[2]]
    assert [slide.closed for slide in opened] == [False, True, False]
    with registry.lease(ids[1]) as again:  # reopened on demand
        assert again.slide.closed is False
    assert len(opened) == 4


def test_an_evicted_slide_stays_open_until_its_reader_is_done(files: list[Path]) -> None:
    opened: list[RecordingSlide] = []
    registry = _registry(1, opened)
    first, second = registry.register(files[0]), registry.register(files[1])
    with registry.lease(first) as reading:
        with registry.lease(second):
            assert registry.open_ids() == [second]
            assert reading.slide.closed is False  # still being read
        assert reading.slide.closed is False
    assert opened[0].closed is True


def test_attachments_are_built_once_per_open_slide(files: list[Path]) -> None:
    registry = _registry(1, [])
    slide_id = registry.register(files[0])
    builds: list[int] = []

    def build(slide: RecordingSlide) -> int:
        builds.append(1)
        return len(builds)

    with registry.lease(slide_id) as opened:
        assert opened.attachment("x", build) == 1
        assert opened.attachment("x", build) == 1
    assert len(builds) == 1


def test_concurrent_leases_open_each_slide_once_and_respect_the_limit(files: list[Path]) -> None:
    opened: list[RecordingSlide] = []
    registry = _registry(2, opened)
    ids = [registry.register(path) for path in files]
    errors: list[str] = []

    def worker(offset: int) -> None:
        for step in range(300):
            slide_id = ids[(offset + step) % len(ids)]
            with registry.lease(slide_id) as lease:
                if lease.slide.closed:
                    errors.append("read a closed slide")
            if len(registry.open_ids()) > 2:
                errors.append("more slides open than allowed")

    run_together(worker, 6)
    assert errors == []
    assert sum(not slide.closed for slide in opened) == len(registry.open_ids())
