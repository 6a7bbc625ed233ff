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
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _path in (REPO, HERE):  # the project, and gpu_answer next to this file
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import gpu_answer  # noqa: E402  (needs the paths above)

from omnipath.facts import is_demo_model  # noqa: E402

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
    demo = is_demo_model(model)
    if precision == "auto" and gpu_gib is not None and gpu_gib < SMALL_GPU_GIB and not demo:
        precision = "4bit"
    if precision in ("4bit", "8bit"):
        out["OMNIPATH_QUANTIZATION"] = precision
    elif precision != "auto":
        out["OMNIPATH_MODEL_DTYPE"] = precision
    data_dir = PERSISTENT / "omnipath" if data_mounted else REPO / "data"
    out["OMNIPATH_DATA_DIR"] = str(data_dir)
    out.setdefault("OMNIPATH_SAMPLE_SLIDE", environ.get("OMNIPATH_SAMPLE_SLIDE", "true"))
    # A Space is reachable by anyone (web/identity.py refuses a public address without logins
    # or a public demo): without a users file, Hugging Face sign-in when the Space has OAuth
    # (`hf_oauth: true` sets OAUTH_CLIENT_ID), else each visitor gets a private space.
    if not environ.get("OMNIPATH_AUTH_FILE"):
        if environ.get("OAUTH_CLIENT_ID") and not environ.get("OMNIPATH_PUBLIC_DEMO"):
            out["OMNIPATH_AUTH"] = environ.get("OMNIPATH_AUTH", "hf")
        else:
            out["OMNIPATH_PUBLIC_DEMO"] = environ.get("OMNIPATH_PUBLIC_DEMO", "true")
    return out


def gpu_seconds(
    slide_path: Any, slide_id: Any, history: Any, question: Any, options: Any = None, *_: Any
) -> int:
    """ZeroGPU duration for one answer, from S and max new tokens; called with the arguments
    of gpu_answer.answer_on_gpu (options: AnswerOptions)."""
    s = 0 if options is None or options.pgdfc_mode == "off" else options.s
    tokens = 256 if options is None else options.max_new_tokens
    return int(min(GPU_MAX_S, GPU_BASE_S + GPU_PER_PATCH_S * s + GPU_PER_TOKEN_S * tokens))


def on_gpu(engine: Any) -> Any:
    """The engine the app should use: on ZeroGPU (the `spaces` package importable), one whose
    answers run gpu_answer.answer_on_gpu under @spaces.GPU in ZeroGPU's GPU process; without
    `spaces`, `engine` itself. Call at start-up, before the server starts."""
    try:
        from spaces import GPU
    except ImportError:
        return engine
    gpu_answer.install(engine)
    return gpu_answer.ZeroGpuEngine(engine, GPU(duration=gpu_seconds)(gpu_answer.answer_on_gpu))


def ensure_viewer(
    viewer_dir: Path | None = None,
    *,
    which: Callable[[str], str | None] = shutil.which,
    run: Callable[..., Any] = subprocess.run,
) -> None:
    """`npm ci` in web/viewer when its node_modules is missing (a Gradio-SDK Space has no
    build step; packages.txt brings Debian's nodejs and npm). Raises
    ViewerAssetsMissingError with a sentence when npm is not installed."""
    from web.viewer_component import VIEWER_DIR, ViewerAssetsMissingError

    viewer_dir = VIEWER_DIR if viewer_dir is None else viewer_dir
    if (viewer_dir / "node_modules").is_dir():
        return
    npm = which("npm")
    if npm is None:
        raise ViewerAssetsMissingError(
            "The slide viewer's packages (web/viewer/node_modules) are missing and npm is not "
            "installed: list nodejs and npm in the Space's packages.txt, or run `npm ci` in "
            "web/viewer before starting.",
            detail=str(viewer_dir),
        )
    run([npm, "ci", "--no-audit", "--no-fund", "--omit=dev"], cwd=viewer_dir, check=True)


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

    from omnipath.errors import OmniPathError

    try:
        ensure_viewer()
    except OmniPathError as exc:
        raise SystemExit(exc.message) from None

    from web.app import app_services, create_app
    from web.config import load_config

    config = load_config([])
    services = app_services(config)
    services.engine = on_gpu(services.engine)
    uvicorn.run(create_app(config, services), host=config.host, port=config.port)


if __name__ == "__main__":
    main()
