"""The sample slide shown on first start: a synthetic slide generated once into the data dir."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def sample_slide_path(data_dir: Path, width: int, height: int, seed: int) -> Path:
    return Path(data_dir) / "sample" / f"synthetic-{width}x{height}-seed{seed}.tiff"


def ensure_sample_slide(
    data_dir: Path, width: int = 16384, height: int = 12288, seed: int = 0
) -> Path:
    """The sample slide's path, generating it (omnipath.synth) when absent.

    Generation writes into a scratch folder that is renamed at the end, so an interrupted
    first start never leaves a half-written slide that later starts would reuse."""
    final = sample_slide_path(data_dir, width, height, seed)
    if final.is_file():
        return final
    from omnipath.synth import write_synthetic_slide

    scratch = final.parent.with_name(final.parent.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    log.info(
        "generating the sample slide (%d x %d, seed %d) into %s", width, height, seed, final.parent
    )
    write_synthetic_slide(scratch / final.name, width, height, seed=seed)
    if final.parent.exists():  # a sample folder without this slide (other size or seed)
        # the slide itself last: its presence is what marks the sample as complete
        for item in sorted(scratch.iterdir(), key=lambda item: item.name == final.name):
            shutil.move(str(item), final.parent / item.name)
        scratch.rmdir()
    else:
        scratch.rename(final.parent)
    return final
