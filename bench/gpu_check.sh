#!/usr/bin/env bash
# The one short device check for a session that is lent a GPU (run from the repo root).
# It installs the pinned requirements if needed, then runs the CUDA tests and prints the
# device. Quote its output in the closing note, naming the card.
set -uo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
[[ -x .venv/bin/python ]] || { python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt; }
.venv/bin/python -m pytest -q -rs -m gpu tests/test_gpu.py
