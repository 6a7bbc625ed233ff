"""OmniPath: slide layer, model, PGDFC and the streaming engine.

This package imports neither `web` nor `storage`. Importing it has no side effects:
heavy modules (torch, transformers, openslide) are imported by the submodules that
need them.
"""

__version__ = "0.1.0"
