"""Hugging Face Spaces entry: Space variables → OmniPath settings, then the same app as
`python -m web`. Configuration and launch only; the app itself lives in web/.

Space variables (Settings → Variables):
    OMNIPATH_MODEL      model id or folder (default "mini": the embedded demonstration model)
    OMNIPATH_PRECISION  auto | float32 | bfloat16 | float16 | 4bit | 8bit (default auto:
                        4-bit when the GPU has less than SMALL_GPU_GIB and the model is not a
                        demonstration model, else the loader's choice)
Persistent storage: when /data is mounted, slides, exports and the SQLite log live under
/data/omnipath; otherwise under ./data (lost when the Space restarts).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SMALL_GPU_GIB = 40  # below this, a 13B model in 16-bit does not fit: load it in 4-bit
PERSISTENT = Path("/data")
# The GPU time one answer may take: vision + probe, each detail patch, each new token.
GPU_BASE_S, GPU_PER_PATCH_S, GPU_PER_TOKEN_S, GPU_MAX_S = 20.0, 1.5, 0.12, 300


def space_environment(
    environ: Mapping[str, str], *, gpu_gib: float | None, data_mounted: bool
) -> dict[str, str]:
    """The OMNIPATH_* variables the app reads, from the Space's variables and hardware."""
    out = {"OMNIPATH_HOST": "0.0.0.0", "OMNIPATH_PORT": environ.get("PORT", "7860")}
    model = environ.get("OMNIPATH_MODEL", "mini")
    out["OMNIPATH_MODEL"] = model
    precision = environ.get("OMNIPATH_PRECISION", "auto").strip().lower()
    demo = model in ("tiny", "mini") or "omnipath-mini" in model
    if precision == "auto" and gpu_gib is not None and gpu_gib < SMALL_GPU_GIB and not demo:
        precision = "4bit"
    if precision in ("4bit", "8bit"):
        out["OMNIPATH_QUANTIZATION"] = precision
    elif precision != "auto":
        out["OMNIPATH_MODEL_DTYPE"] = precision
    data_dir = PERSISTENT / "omnipath" if data_mounted else REPO / "data"
    out["OMNIPATH_DATA_DIR"] = str(data_dir)
    out.setdefault("OMNIPATH_SAMPLE_SLIDE", environ.get("OMNIPATH_SAMPLE_SLIDE", "true"))
    return out


def gpu_seconds(slide: Any, history: Any, question: Any, options: Any = None, **_: Any) -> int:
    """ZeroGPU duration for one answer, from S and max new tokens."""
    s = 0 if options is None or options.pgdfc_mode == "off" else options.s
    tokens = 256 if options is None else options.max_new_tokens
    return int(min(GPU_MAX_S, GPU_BASE_S + GPU_PER_PATCH_S * s + GPU_PER_TOKEN_S * tokens))


def on_gpu(engine: Any) -> None:
    """Run the engine's answers under @spaces.GPU (ZeroGPU); a no-op without `spaces` and
    effect-free on dedicated GPU hardware."""
    try:
        import spaces
    except ImportError:
        return
    answer = engine.answer

    @spaces.GPU(duration=gpu_seconds)
    def stream(slide, history, question, options=None, *, stop=None, l0_region=None):
        yield from answer(slide, history, question, options, stop=stop, l0_region=l0_region)

    def checked(slide, history, question, options=None, *, stop=None, l0_region=None):
        # Engine.answer checks its arguments when called; keep that before the GPU is taken.
        answer(slide, history, question, options, stop=stop, l0_region=l0_region).close()
        return stream(slide, history, question, options, stop=stop, l0_region=l0_region)

    engine.answer = checked


def _gpu_gib() -> float | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(0).total_memory / 1024**3
    except Exception:
        return None
    return None


def main(environ: MutableMapping[str, str] = os.environ) -> None:
    mounted = PERSISTENT.is_dir() and os.access(PERSISTENT, os.W_OK)
    environ.update(space_environment(environ, gpu_gib=_gpu_gib(), data_mounted=mounted))
    import uvicorn

    from web.app import app_services, create_app
    from web.config import load_config

    config = load_config([])
    services = app_services(config)
    on_gpu(services.engine)
    uvicorn.run(create_app(config, services), host=config.host, port=config.port)


if __name__ == "__main__":
    main()
