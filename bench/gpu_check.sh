#!/usr/bin/env bash
# The one device check for a session lent a GPU, on a machine with NO network; one run stays
# under 8 minutes. From the repo root:   bash bench/gpu_check.sh
#
# It uses the machine's own python3 (it has torch, transformers, timm, peft, accelerate,
# safetensors, sentencepiece, pytest), never a package index. What the checks need and that
# image lacks travels as wheels in .whl/ (ignored by git, named in the device tool's `carry`),
# fetched on a machine with a network, into the repo root (python 3.12, manylinux x86_64; see
# the device tool's README):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl \
#     openslide-python==1.4.7 openslide-bin==4.0.1.2 segment-anything==1.0 transformers==5.24.0
# The carry limit, 64 MiB, holds the working tree AND the wheels; the tree is ~35 MiB (34 of
# them omnipath-mini's weights), so that set (~15 MB) fits and bitsandbytes (~60 MB wheel)
# does not: without it the 4-bit figures and CUDA tests print "skipped" with the reason.
# Not carried, not needed here: gguf (only omnipath-mini), SQLAlchemy/alembic (the session
# log; no check here touches it), imagecodecs (~20 MB; only the synthetic-slide writer, which
# these checks avoid). transformers 5.24.0 is our pin; without the wheel the image's own (5.17
# when last read) is used and its version printed.
#
# Prints: the device; the CUDA tests (-m gpu); fp16 vs 4-bit tokens/s of 7B- and 13B-shaped
# random-weight LLMs; the paper's 13B OmniPath shapes fp16 and 4-bit: memory and PGDFC latency
# over thumbnail-only (bench/gpu_check.py says how each is measured). Quote the output in the
# closing note, naming the card. Without a CUDA GPU it says so and exits 0 (a dry run:
# `bash bench/gpu_check.sh` on a CPU; `PYTHON=.venv/bin/python` to use the project's venv).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
SITE=/tmp/omnipath-site

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "No CUDA GPU is visible to $PY (or it has no torch): the GPU check is skipped; run it on a machine lent a GPU."
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl || { echo "Installing the carried wheels from .whl/ failed."; exit 1; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" - <<'EOF'
import importlib, sys
print(f"python {sys.version.split()[0]}")
for name in ("torch", "transformers", "timm", "peft", "accelerate", "openslide",
             "segment_anything", "bitsandbytes"):
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '')}")
    except Exception as error:  # missing, or a native library that does not load
        print(f"  {name}: MISSING ({type(error).__name__}); what needs it is skipped or fails")
EOF

echo "== CUDA tests (pytest -m gpu)"
timeout 180 "$PY" -m pytest -q -rs -p no:cacheprovider -m gpu tests/test_gpu.py \
  tests/test_original_llava.py
echo "pytest exit status: $?"

echo "== figures (bench/gpu_check.py)"
PYTHONUNBUFFERED=1 timeout 250 "$PY" bench/gpu_check.py
status=$?
[[ $status == 124 ]] && echo "bench/gpu_check.py stopped at its 250 s limit; the figures above are the ones it reached."
exit $status
