"""The sample slide shown on first start: a synthetic slide generated once into the data dir."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def sample_slide_path(data_dir: Path, width: int, height: int, seed: int) -> Path:
    return Path(data_dir) / "sample" / f"synthetic-{width}x{height}-seed{seed}.tiff"


def ensure_sample_slide(
    data_dir: Path, width: int = 16384, height: int = 12288, seed: int = 0
) -> Path:
    """The sample slide's path, generating it (omnipath.synth) when absent."""
    final = sample_slide_path(data_dir, width, height, seed)
    if not final.is_file():
        log.info(
            "generating the sample slide (%d x %d, seed %d) into %s",
            width, height, seed, final.parent,
        )  # fmt: skip
    return ensure_synthetic_slide(final, width, height, seed=seed)


def ensure_synthetic_slide(path: Path, width: int, height: int, **options: Any) -> Path:
    """`path`, a synthetic slide (omnipath.synth.write_synthetic_slide(path, width, height,
    **options)) with its ground-truth files beside it, generated only when absent.

    Generation writes into a scratch folder next to it and moves the slide in last, so an
    interrupted run never leaves a half-written slide that a later run would reuse."""
    path = Path(path)
    if path.is_file():
        return path
    from omnipath.synth import write_synthetic_slide

    scratch = path.parent / f".partial-{path.name}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    write_synthetic_slide(scratch / path.name, width, height, **options)
    # the slide itself last: its presence is what marks it complete
    for item in sorted(scratch.iterdir(), key=lambda item: item.name == path.name):
        item.replace(path.parent / item.name)
    scratch.rmdir()
    return path
