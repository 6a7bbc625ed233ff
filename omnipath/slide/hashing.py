"""Content hashes: the slide id is the hash of the bytes, never the name."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

CHUNK_BYTES = 1024 * 1024


def content_hash(
    path: str | os.PathLike[str], on_bytes: Callable[[int], None] | None = None
) -> str:
    """sha256 hex digest of the file's bytes, streamed in 1 MiB chunks; `on_bytes` is called
    with the number of bytes hashed so far after each chunk (an upload's progress bar)."""
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            done += len(chunk)
            if on_bytes is not None:
                on_bytes(done)
    return digest.hexdigest()
