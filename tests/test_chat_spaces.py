"""spaces/app.py: Space variables → settings, the GPU duration, and the @spaces.GPU wrapper."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from omnipath.engine import AnswerOptions
from omnipath.errors import OptionsError

SPACES_APP = Path(__file__).resolve().parents[1] / "spaces" / "app.py"


@pytest.fixture(scope="module")
def space_app():
    spec = importlib.util.spec_from_file_location("omnipath_space_app", SPACES_APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variables_become_settings(space_app) -> None:
    env = space_app.space_environment(
        {"OMNIPATH_MODEL": "org/omnipath-13b"}, gpu_gib=24.0, data_mounted=True
    )
    assert env["OMNIPATH_MODEL"] == "org/omnipath-13b"
    assert env["OMNIPATH_QUANTIZATION"] == "4bit"  # a 13B model on a 24 GB GPU
    assert env["OMNIPATH_DATA_DIR"] == "/data/omnipath" and env["OMNIPATH_HOST"] == "0.0.0.0"
    big = space_app.space_environment(
        {"OMNIPATH_MODEL": "org/omnipath-13b"}, gpu_gib=80.0, data_mounted=False
    )
    assert "OMNIPATH_QUANTIZATION" not in big and big["OMNIPATH_DATA_DIR"].endswith("data")
    fp16 = space_app.space_environment(
        {"OMNIPATH_MODEL": "x", "OMNIPATH_PRECISION": "float16"}, gpu_gib=24.0, data_mounted=False
    )
    assert fp16["OMNIPATH_MODEL_DTYPE"] == "float16" and "OMNIPATH_QUANTIZATION" not in fp16
    demo = space_app.space_environment({}, gpu_gib=16.0, data_mounted=False)
    assert demo["OMNIPATH_MODEL"] == "mini" and "OMNIPATH_QUANTIZATION" not in demo


def test_gpu_duration_grows_with_s_and_new_tokens(space_app) -> None:
    seconds = space_app.gpu_seconds
    small = seconds(None, [], "q", AnswerOptions(s=2, max_new_tokens=32))
    more_patches = seconds(None, [], "q", AnswerOptions(s=16, max_new_tokens=32))
    more_tokens = seconds(None, [], "q", AnswerOptions(s=2, max_new_tokens=1024))
    assert small < more_patches and small < more_tokens
    assert seconds(None, [], "q", AnswerOptions(pgdfc_mode="off", s=0, max_new_tokens=32)) < small
    assert seconds(None, [], "q", AnswerOptions(s=64, max_new_tokens=4096)) == space_app.GPU_MAX_S


class _Engine:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def answer(
        self,
        slide,
        history,
        question,
        options=None,
        *,
        stop=None,
        l0_region=None,
        slide_id=None,
        queue_updates=False,
    ):
        if not question:
            raise OptionsError("The question is empty; type a question about the slide.")

        def stream():
            self.asked.append(question)
            yield "an "
            yield "answer"

        return stream()


def test_answers_run_under_spaces_gpu_with_their_duration(space_app, monkeypatch) -> None:
    durations = []

    def gpu(duration):
        def decorate(fn):
            def run(*args, **kwargs):
                durations.append(duration(*args, **kwargs))
                return fn(*args, **kwargs)

            return run

        return decorate

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    engine = _Engine()
    space_app.on_gpu(engine)
    options = AnswerOptions(s=4, max_new_tokens=10)
    assert list(engine.answer(None, [], "where?", options)) == ["an ", "answer"]
    assert durations == [space_app.gpu_seconds(None, [], "where?", options)]
    assert engine.asked == ["where?"]
    with pytest.raises(OptionsError):  # checked when called, before any GPU time is asked for
        engine.answer(None, [], "", options)
    assert len(durations) == 1


def test_without_the_spaces_package_the_engine_is_left_alone(space_app, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "spaces", None)  # import fails
    engine = _Engine()
    original = engine.answer
    space_app.on_gpu(engine)
    assert engine.answer == original
