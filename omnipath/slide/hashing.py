"""Content hashes: the slide id is the hash of the bytes, never the name."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from contextlib import nullcontext

CHUNK_BYTES = 1024 * 1024


def content_hash(
    path: str | os.PathLike[str],
    on_bytes: Callable[[int], None] | None = None,
    *,
    copy_to: str | os.PathLike[str] | None = None,
) -> str:
    """sha256 hex digest of the file's bytes, streamed in 1 MiB chunks; `on_bytes` is called
    with the number of bytes hashed so far after each chunk (an upload's progress bar).

    copy_to: a new file (it must not exist) that gets every chunk too, so one pass over the
    bytes both copies and hashes them (an upload stored under a temporary name, renamed to
    its hash afterwards)."""
    digest = hashlib.sha256()
    done = 0
    with (
        open(path, "rb") as handle,
        open(copy_to, "xb") if copy_to is not None else nullcontext() as out,
    ):
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            if out is not None:
                out.write(chunk)
            done += len(chunk)
            if on_bytes is not None:
                on_bytes(done)
    return digest.hexdigest()
