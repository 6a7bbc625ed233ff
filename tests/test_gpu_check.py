"""bench/gpu_check.sh and bench/gpu_check.py on a machine without a GPU: the shell script is
valid bash and skips with a sentence; the Python steps run end to end on tiny shapes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.sh"


def test_gpu_check_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU dry run")
def test_gpu_check_without_a_gpu_skips_with_a_sentence():
    done = subprocess.run(
        ["bash", str(SCRIPT)],
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0
    assert "No CUDA GPU is visible" in done.stdout and "skipped" in done.stdout


@pytest.mark.slow
def test_gpu_check_steps_run_on_tiny_shapes_on_a_cpu(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(REPO / "bench"))
    assert gpu_check.main(["--tiny", "--device", "cpu", "--new-tokens", "4",
                           "--slide-dir", str(tmp_path)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "| tiny-a |" in out and "| tiny-b |" in out
    assert "PGDFC" in out and "thumbnail-only" in out
