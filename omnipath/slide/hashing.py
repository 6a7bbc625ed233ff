"""Content hashes: the slide id is the hash of the bytes, never the name."""

from __future__ import annotations

import hashlib
import os

CHUNK_BYTES = 1024 * 1024


def content_hash(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of the file's bytes, streamed in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
