"""MIRAX slides arrive as a .zip holding one .mrxs file and its data folder.

Extraction is defensive: every member name must stay inside the target folder (no
absolute paths, no `..`, no links: zip-slip), and the archive must not expand beyond the
limits (member count, total size, per-member compression ratio, and the bytes actually
written: zip bombs). The extracted folder sits next to the zip and is reused while the zip
is unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from omnipath.errors import SlideTooLargeError, TruncatedSlideError, UnsupportedSlideError
from omnipath.slide.limits import SlideLimits

MARKER = ".omnipath-extracted.json"
COPY_CHUNK = 1024 * 1024


def _safe_member_path(name: str) -> PurePosixPath:
    """The member's relative path, or UnsupportedSlideError when it could escape."""
    normalized = name.replace("\\", "/")
    member = PurePosixPath(normalized)
    if (
        not normalized
        or normalized.startswith("/")
        or (len(normalized) > 1 and normalized[1] == ":")  # C:/...
        or any(part in ("..", "") for part in member.parts if part != ".")
        or "\x00" in normalized
    ):
        raise UnsupportedSlideError(
            "The zip archive contains a file path that points outside the archive "
            f"({name!r}); it was not extracted.",
            detail="zip-slip",
        )
    return member


def _check_archive(archive: zipfile.ZipFile, limits: SlideLimits) -> list[zipfile.ZipInfo]:
    members = archive.infolist()
    if len(members) > limits.max_zip_members:
        raise SlideTooLargeError(
            f"The zip archive holds {len(members)} files; at most {limits.max_zip_members} "
            "are accepted."
        )
    total = 0
    for info in members:
        _safe_member_path(info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsupportedSlideError(
                f"The zip archive contains a symbolic link ({info.filename!r}); links are "
                "not accepted.",
                detail="zip symlink",
            )
        total += info.file_size
        if info.file_size > 1024 * 1024 and info.file_size > limits.max_zip_ratio * max(
            1, info.compress_size
        ):
            raise SlideTooLargeError(
                f"The zip archive member {info.filename!r} expands {info.file_size} bytes "
                f"from {info.compress_size}: that looks like a zip bomb.",
                detail="zip ratio",
            )
    if total > limits.max_zip_bytes:
        raise SlideTooLargeError(
            f"The zip archive would expand to {total / 1024**3:.1f} GiB; at most "
            f"{limits.max_zip_bytes / 1024**3:.1f} GiB is accepted."
        )
    return members


def _find_mrxs(members: list[zipfile.ZipInfo]) -> PurePosixPath:
    mrxs = [
        _safe_member_path(info.filename)
        for info in members
        if not info.is_dir() and info.filename.lower().endswith(".mrxs")
    ]
    if not mrxs:
        raise UnsupportedSlideError(
            "The zip archive holds no MIRAX slide: it needs one .mrxs file and the folder "
            "of the same name next to it."
        )
    if len(mrxs) > 1:
        raise UnsupportedSlideError(
            f"The zip archive holds {len(mrxs)} .mrxs files; upload one MIRAX slide per zip."
        )
    slide = mrxs[0]
    folder = slide.parent / slide.stem
    names = {PurePosixPath(info.filename.replace("\\", "/").rstrip("/")) for info in members}
    if not any(name.parent == folder or name == folder for name in names):
        raise UnsupportedSlideError(
            f"The zip archive holds {slide.name} but not its data folder {slide.stem}/; "
            "zip the .mrxs file together with that folder."
        )
    return slide


def _extract(
    archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], target: Path, limits: SlideLimits
) -> None:
    written = 0
    for info in members:
        relative = _safe_member_path(info.filename)
        destination = target.joinpath(*relative.parts)
        if not destination.resolve().is_relative_to(target.resolve()):
            raise UnsupportedSlideError(
                f"The zip archive member {info.filename!r} points outside the archive.",
                detail="zip-slip",
            )
        if info.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        member_written = 0
        with archive.open(info) as source, open(destination, "wb") as sink:
            while chunk := source.read(COPY_CHUNK):
                member_written += len(chunk)
                written += len(chunk)
                # Headers can lie about sizes: count what really comes out.
                if member_written > info.file_size or written > limits.max_zip_bytes:
                    raise SlideTooLargeError(
                        "The zip archive expands to more than it declares; extraction "
                        "stopped (possible zip bomb).",
                        detail="zip size mismatch",
                    )
                sink.write(chunk)


def extract_mirax_zip(path: Path, limits: SlideLimits) -> Path:
    """Extract the zip next to itself (once) and return the path of its .mrxs file."""
    stamp = os.stat(path)
    signature = {"size": stamp.st_size, "mtime_ns": stamp.st_mtime_ns}
    target = path.with_name(path.name + ".extracted")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise TruncatedSlideError(
            "The zip archive is incomplete or damaged (its table of contents is missing); "
            "upload it again.",
            detail=str(error),
        ) from error
    with archive:
        members = _check_archive(archive, limits)
        mrxs = _find_mrxs(members)
        marker = target / MARKER
        if marker.is_file():
            try:
                if json.loads(marker.read_text()) == signature:
                    return target.joinpath(*mrxs.parts)
            except (OSError, ValueError):
                pass
        partial = path.with_name(f"{path.name}.extracting-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            _extract(archive, members, partial, limits)
        except zipfile.BadZipFile as error:
            shutil.rmtree(partial, ignore_errors=True)
            raise TruncatedSlideError(
                "The zip archive is damaged: a file inside it cannot be read.",
                detail=str(error),
            ) from error
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        (partial / MARKER).write_text(json.dumps(signature))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
    return target.joinpath(*mrxs.parts)
