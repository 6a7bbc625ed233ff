"""spaces/app.py: Space variables → settings, the GPU duration, answers on ZeroGPU (through a
stand-in `spaces` that pickles what crosses to the GPU process, as ZeroGPU does), the viewer's
npm install at start-up and the Gradio-SDK Space's front matter."""

from __future__ import annotations

import importlib.util
import pickle
import queue
import re
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from omnipath.coords import L0Rect
from omnipath.engine import AnswerOptions
from omnipath.engine.results import Answer, MaskResult
from omnipath.errors import OptionsError, SlideError
from web.viewer_component import ViewerAssetsMissingError

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


def test_a_space_starts_as_a_public_demo_unless_it_has_logins(space_app, tmp_path) -> None:
    """A Space listens on 0.0.0.0: its settings must pass the refusal to start a public
    address without logins, as anonymous private spaces or with a users file."""
    from web.config import load_config
    from web.identity import check_exposure

    env = space_app.space_environment({}, gpu_gib=None, data_mounted=False)
    config = load_config([], env)
    assert config.public_demo and config.auth_mode == "public-demo"
    check_exposure(config)
    users = tmp_path / "users.toml"
    users.write_text("", encoding="utf-8")
    with_logins = space_app.space_environment(
        {"OMNIPATH_AUTH_FILE": str(users)}, gpu_gib=None, data_mounted=False
    )
    assert "OMNIPATH_PUBLIC_DEMO" not in with_logins


def test_a_space_with_oauth_uses_hugging_face_sign_in(space_app) -> None:
    """`hf_oauth: true` gives the Space OAUTH_CLIENT_ID: sign-in with Hugging Face instead of
    the public demo (which the Space can still ask for)."""
    from web.config import load_config
    from web.identity import check_exposure

    env = space_app.space_environment(
        {"OAUTH_CLIENT_ID": "client"}, gpu_gib=None, data_mounted=False
    )
    config = load_config([], env)
    assert config.auth_mode == "hf" and "OMNIPATH_PUBLIC_DEMO" not in env
    check_exposure(config)
    demo = space_app.space_environment(
        {"OAUTH_CLIENT_ID": "client", "OMNIPATH_PUBLIC_DEMO": "true"},
        gpu_gib=None,
        data_mounted=False,
    )
    assert load_config([], demo).auth_mode == "public-demo"


def test_both_spaces_ask_for_hugging_face_sign_in() -> None:
    for readme in (SPACES_APP.parent / "README.md", SPACES_APP.parent / "zerogpu" / "README.md"):
        assert "\nhf_oauth: true\n" in readme.read_text().split("---")[1]


def test_gpu_duration_grows_with_s_and_new_tokens(space_app) -> None:
    def seconds(options: AnswerOptions) -> int:  # called with answer_on_gpu's arguments
        return space_app.gpu_seconds("slide.tiff", "id", [], "q", options, None, "token", False)

    small = seconds(AnswerOptions(s=2, max_new_tokens=32))
    assert small < seconds(AnswerOptions(s=16, max_new_tokens=32))
    assert small < seconds(AnswerOptions(s=2, max_new_tokens=1024))
    assert seconds(AnswerOptions(pgdfc_mode="off", s=0, max_new_tokens=32)) < small
    assert seconds(AnswerOptions(s=64, max_new_tokens=4096)) == space_app.GPU_MAX_S


class PicklingGPU:
    """A stand-in `spaces` module: GPU(duration=...) runs the task the way ZeroGPU does: the
    arguments pickled to the worker, the task iterated to its end on the worker's own thread
    (closing the reader does not close it), each item and any exception pickled back."""

    def __init__(self) -> None:
        self.durations: list[int] = []
        self.received: list[tuple] = []  # (args, kwargs) as the task got them
        self.produced: list[list] = []  # the items each task yielded, before pickling
        self.workers: list[threading.Thread] = []

    def GPU(self, duration):  # noqa: N802 - the name `spaces` has
        def decorate(task):
            def handler(*args, **kwargs):
                self.durations.append(duration(*args, **kwargs))
                args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
                self.received.append((args, kwargs))
                results: queue.Queue = queue.Queue()
                produced: list = []
                self.produced.append(produced)

                def work() -> None:
                    try:
                        for item in task(*args, **kwargs):
                            produced.append(item)
                            results.put(("ok", pickle.dumps(item)))
                    except Exception as exc:
                        results.put(("error", pickle.dumps(exc)))
                    results.put(("end", None))

                worker = threading.Thread(target=work, daemon=True)
                self.workers.append(worker)
                worker.start()
                while True:
                    kind, data = results.get()
                    if kind == "end":
                        return
                    if kind == "error":
                        raise pickle.loads(data)
                    yield pickle.loads(data)

            return handler

        return decorate

    def join(self) -> None:
        for worker in self.workers:
            worker.join()


@pytest.fixture
def zerogpu(space_app, tiny_engine, monkeypatch, tmp_path):
    spaces = PicklingGPU()
    monkeypatch.setitem(sys.modules, "spaces", spaces)
    monkeypatch.setattr(space_app.gpu_answer, "STOP_DIR", tmp_path / "stops")
    engine = space_app.on_gpu(tiny_engine)
    yield spaces, engine
    spaces.join()
    space_app.gpu_answer.install(None)


@pytest.fixture
def slide(synthetic_slide):
    from omnipath.slide import open_slide

    with open_slide(synthetic_slide.path) as opened:
        yield opened


def test_answers_cross_to_the_gpu_process_as_plain_values(space_app, zerogpu, slide) -> None:
    spaces, engine = zerogpu
    assert isinstance(engine, space_app.gpu_answer.ZeroGpuEngine)
    assert engine.info["model_id"] == "tiny"  # the engine's API, unchanged
    history = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi."}]
    options = AnswerOptions(s=2, max_new_tokens=12)
    slide_id = "a" * 64
    items = list(
        engine.answer(
            slide,
            history,
            "Where is the lesion?",
            options,
            stop=threading.Event(),
            l0_region=L0Rect(100, 200, 800, 600),
            slide_id=slide_id,
            queue_updates=True,
        )
    )
    args, kwargs = spaces.received[0]
    assert kwargs == {}
    path, got_id, got_history, question, got_options, region, token, queued = args
    assert path == str(slide.path) and got_id == slide_id and got_history == history
    assert question == "Where is the lesion?" and got_options == options
    assert region == (100, 200, 800, 600) and queued is True
    assert re.fullmatch(r"[0-9a-f]{32}", token)
    assert spaces.durations == [space_app.gpu_seconds(*args)]
    answer = items[-1]
    assert isinstance(answer, Answer) and answer.tokens["generated"] > 0
    assert answer.text == "".join(i for i in items if isinstance(i, str))
    spaces.join()
    assert [getattr(i, "to_dict", lambda i=i: i)() for i in spaces.produced[0]] == [
        getattr(i, "to_dict", lambda i=i: i)() for i in items
    ]
    # masks carry numpy bitmaps: they pickle as they are
    masked = Answer("a", masks=[MaskResult(np.eye(3, dtype=bool), L0Rect(1, 2, 3, 4))])
    assert pickle.loads(pickle.dumps(masked)).to_dict() == masked.to_dict()
    # bad input is refused in the app's process, before any GPU time is asked for
    with pytest.raises(OptionsError):
        engine.answer(slide, [], "   ", options)
    with pytest.raises(OptionsError):
        engine.answer(slide, [], "Where?", AnswerOptions(s=0))
    assert len(spaces.durations) == 1


def test_stop_reaches_the_gpu_process(space_app, zerogpu, slide) -> None:
    spaces, engine = zerogpu
    options = AnswerOptions(s=2, max_new_tokens=400)
    stop = threading.Event()
    items = []
    for item in engine.answer(slide, [], "Describe the slide.", options, stop=stop):
        items.append(item)
        stop.set()  # pressed after the first item
    assert items[-1].stopped and items[-1].tokens["generated"] < 400
    # a reader that goes away (a closed tab) stops the GPU side too
    stream = engine.answer(slide, [], "Describe the slide.", options, stop=threading.Event())
    assert isinstance(next(stream), str)
    stream.close()
    spaces.join()
    gpu_side = spaces.produced[1][-1]
    assert gpu_side.stopped and gpu_side.tokens["generated"] < 400
    assert not list(space_app.gpu_answer.STOP_DIR.glob("*"))  # the GPU side cleaned up


def test_gpu_side_errors_come_back_as_sentences(space_app, zerogpu, tmp_path) -> None:
    spaces, _ = zerogpu
    on_gpu = spaces.GPU(duration=space_app.gpu_seconds)(space_app.gpu_answer.answer_on_gpu)
    gone = str(tmp_path / "gone.tiff")  # the slide's file was removed meanwhile
    with pytest.raises(SlideError) as caught:  # the error pickles back with its sentence
        list(on_gpu(gone, None, [], "Where?", AnswerOptions(), None, "0" * 32))
    assert "cannot be found" in caught.value.message


def test_without_the_spaces_package_the_engine_is_left_alone(space_app, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "spaces", None)  # import fails
    engine = object()
    assert space_app.on_gpu(engine) is engine


def test_viewer_packages_installed_at_start_when_missing(space_app, tmp_path) -> None:
    calls = []

    def run(command, **kwargs):
        calls.append((command, kwargs))

    space_app.ensure_viewer(tmp_path, which=lambda name: f"/usr/bin/{name}", run=run)
    assert calls == [
        (
            ["/usr/bin/npm", "ci", "--no-audit", "--no-fund", "--omit=dev"],
            {"cwd": tmp_path, "check": True},
        )
    ]
    with pytest.raises(ViewerAssetsMissingError, match="npm is not installed"):
        space_app.ensure_viewer(tmp_path, which=lambda name: None, run=run)
    (tmp_path / "node_modules").mkdir()
    space_app.ensure_viewer(tmp_path, which=lambda name: None, run=run)  # nothing to do
    assert len(calls) == 1


def test_gradio_sdk_space_front_matter() -> None:
    repo = SPACES_APP.parents[1]
    text = (SPACES_APP.parent / "zerogpu" / "README.md").read_text()
    front = dict(
        line.split(": ", 1) for line in text.split("---")[1].strip().splitlines() if ": " in line
    )
    pinned = re.search(r"^gradio==(\S+)$", (repo / "requirements.txt").read_text(), re.M)
    assert front["sdk"] == "gradio" and front["sdk_version"] == pinned.group(1)
    assert (repo / front["app_file"]).resolve() == SPACES_APP
    packages = (SPACES_APP.parent / "zerogpu" / "packages.txt").read_text().split()
    assert {"nodejs", "npm"} <= set(packages)
