"""Facts shared by the model, the slide layer, the web app and the session log, stated once.

Plain Python (no torch, no OpenSlide): storage/ and web/ import it without loading a model.
"""

from __future__ import annotations

import re

# How the detail reads are chosen (omnipath/pgdfc.py): where the question points, random
# tissue, or none (thumbnail only).
PGDFC_MODES: tuple[str, ...] = ("attention", "random", "off")

# Model precisions that can be asked for (--model-dtype), and weight quantizations.
DTYPE_NAMES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
QUANTIZATIONS: tuple[str, ...] = ("4bit", "8bit")

# A slide's id: the sha256 hex digest of its file's bytes (omnipath/slide/hashing.py).
SLIDE_ID_RE = re.compile(r"[0-9a-f]{64}")

# Model names labelled a demonstration: the exact names, or any id naming omnipath-mini
# (a plain substring "mini" would also catch, say, phi-3-mini).
DEMO_MODEL_NAMES = ("tiny", "mini")
DEMO_MODEL_MARKERS = ("omnipath-mini",)


def is_slide_id(value: object) -> bool:
    """True for text shaped like a slide id (so `../x`, `%2e%2e` or `/etc` are refused early)."""
    return isinstance(value, str) and SLIDE_ID_RE.fullmatch(value) is not None


def is_demo_model(name: str) -> bool:
    """True when the model `name` (as given to --model, or a model id) is a demonstration."""
    name = name.lower()
    return name in DEMO_MODEL_NAMES or any(marker in name for marker in DEMO_MODEL_MARKERS)
