"""The tile cache: bounded in bytes, least recently used evicted first, safe across threads."""

from __future__ import annotations

import random

import pytest

from tests.threads import run_together
from web.tile_cache import TileCache


def _value(key: int, size: int) -> bytes:
    # The bytes encode their key, so a value returned for the wrong key is caught.
    return key.to_bytes(4, "big") * (size // 4)


def test_total_bytes_never_exceed_the_bound_and_oldest_go_first() -> None:
    cache = TileCache(max_bytes=1000)
    for key in range(5):
        cache.put(key, _value(key, 300))
    stats = cache.stats()
    assert stats.bytes <= 1000
    assert stats.entries == 3 and stats.evictions == 2
    assert cache.get(0) is None and cache.get(1) is None
    assert cache.get(4) == _value(4, 300)


def test_a_read_makes_an_entry_recent() -> None:
    cache = TileCache(max_bytes=900)
    for key in range(3):
        cache.put(key, _value(key, 300))
    assert cache.get(0) is not None  # 0 is now the most recent; 1 is the oldest
    cache.put(3, _value(3, 300))
    assert cache.get(1) is None
    assert cache.get(0) == _value(0, 300)


def test_replacing_a_key_counts_its_bytes_once() -> None:
    cache = TileCache(max_bytes=1000)
    cache.put("a", b"x" * 400)
    cache.put("a", b"y" * 100)
    assert cache.stats().bytes == 100
    assert cache.get("a") == b"y" * 100


def test_a_value_larger_than_the_cache_is_not_stored() -> None:
    cache = TileCache(max_bytes=100)
    cache.put("small", b"s" * 50)
    cache.put("huge", b"h" * 101)
    assert cache.get("huge") is None
    assert cache.get("small") == b"s" * 50


def test_negative_bound_is_refused() -> None:
    with pytest.raises(ValueError):
        TileCache(max_bytes=-1)


def test_threads_hammering_the_cache_keep_it_consistent() -> None:
    cache = TileCache(max_bytes=20_000)
    errors: list[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(3000):
            key = rng.randrange(200)
            size = 4 * rng.randrange(1, 100)
            if rng.random() < 0.5:
                cache.put(key, _value(key, size))
            else:
                got = cache.get(key)
                if got is not None and got[:4] != key.to_bytes(4, "big"):
                    errors.append(f"key {key} returned another key's bytes")
            if cache.stats().bytes > cache.max_bytes:
                errors.append("the byte bound was exceeded")

    run_together(worker, 8)
    assert errors == []
    stats = cache.stats()
    assert stats.bytes == sum(len(v) for v in cache._items.values())
    assert stats.hits + stats.misses > 0
