"""Answers on ZeroGPU: the engine's answer, run by `@spaces.GPU` in ZeroGPU's GPU process.

ZeroGPU runs a decorated function in a worker process forked from the app's: the arguments
and every yielded item cross the boundary by pickle. So the GPU side receives only plain
values (the slide's path and id, the history, the question, AnswerOptions, the region as
x, y, w, h and a stop token), opens the slide itself and answers with the engine installed
before the fork (`install`); it yields str, Queued and Answer, which all pickle (the masks'
bitmaps are numpy arrays).

Stop: a threading.Event cannot cross the process boundary, and closing the app's side of the
stream does not close the worker's generator (ZeroGPU's worker iterates it to the end on its
own thread, whoever reads). So each answer gets a random stop token; the app's side writes a
file named by it under STOP_DIR when Stop is pressed or its reader goes away, and the GPU
side's stop flag is that file's existence, checked by the engine at every generated token.
"""

from __future__ import annotations

import re
import secrets
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omnipath.coords import L0Rect
from omnipath.engine import AnswerOptions
from omnipath.errors import OptionsError

STOP_DIR = Path(tempfile.gettempdir()) / "omnipath-stops"
STOP_POLL_S = 0.05  # how often the app's side looks whether its answer has ended
_TOKEN_RE = re.compile(r"[0-9a-f]{32}")
_engine: Any = None  # the engine the GPU process answers with (install)


def install(engine: Any) -> None:
    """The engine `answer_on_gpu` uses: loaded once in the app's process before ZeroGPU forks
    its GPU worker, which inherits it (ZeroGPU moves its CUDA tensors onto the GPU there)."""
    global _engine
    _engine = engine


class StopFile:
    """The GPU side's stop flag: set once the file named by the answer's token exists."""

    def __init__(self, token: str) -> None:
        if not _TOKEN_RE.fullmatch(token):
            raise OptionsError("The answer's stop token is malformed.")
        self.path = STOP_DIR / token

    def is_set(self) -> bool:
        return self.path.exists()

    def set(self) -> None:  # the app's side
        STOP_DIR.mkdir(parents=True, exist_ok=True)
        self.path.touch()

    def clear(self) -> None:  # the GPU side, once its answer has ended
        self.path.unlink(missing_ok=True)


def answer_on_gpu(
    slide_path: str,
    slide_id: str | None,
    history: list[dict],
    question: str,
    options: AnswerOptions,
    region: tuple[int, int, int, int] | None,
    stop_token: str,
    queue_updates: bool = False,
) -> Iterator[Any]:
    """Engine.answer on the slide at `slide_path`, from picklable arguments only; yields str,
    Queued and one Answer (all picklable). region: level-0 x, y, w, h, or None."""
    from omnipath.slide import open_slide  # the slide layer loads in the worker too

    if _engine is None:
        raise RuntimeError("No engine installed for ZeroGPU answers (gpu_answer.install).")
    l0_region = None if region is None else L0Rect(*(int(v) for v in region))
    stop = StopFile(stop_token)
    try:
        with open_slide(slide_path) as slide:
            yield from _engine.answer(
                slide,
                history,
                question,
                options,
                stop=stop,
                l0_region=l0_region,
                slide_id=slide_id,
                queue_updates=queue_updates,
            )
    finally:
        stop.clear()


class ZeroGpuEngine:
    """The app's engine with `answer` sent to `run_on_gpu` (answer_on_gpu under @spaces.GPU)
    in picklable form; every other attribute is the engine's own, so handlers are unchanged."""

    def __init__(self, engine: Any, run_on_gpu: Callable[..., Iterator[Any]]) -> None:
        self._engine = engine
        self._run_on_gpu = run_on_gpu

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def answer(
        self,
        slide: Any,
        history: list[dict] | None,
        question: str,
        options: AnswerOptions | None = None,
        *,
        stop: threading.Event | None = None,
        l0_region: L0Rect | None = None,
        slide_id: str | None = None,
        queue_updates: bool = False,
    ) -> Iterator[Any]:
        """Engine.answer's contract. The arguments are checked here, as Engine.answer checks
        them (the thumbnail and S against its tissue), before any GPU time is asked for."""
        self._engine.answer(
            slide, history, question, options, l0_region=l0_region, slide_id=slide_id
        ).close()
        path = getattr(slide, "path", None)
        if path is None:
            raise OptionsError("On ZeroGPU the slide must be one opened from a file.")
        region = None if l0_region is None else (l0_region.x, l0_region.y, l0_region.w, l0_region.h)
        flag = StopFile(secrets.token_hex(16))
        stream = self._run_on_gpu(
            str(path),
            slide_id,
            list(history or []),
            question,
            options if options is not None else AnswerOptions(),
            region,
            flag.path.name,
            queue_updates,
        )
        return _relayed(stream, stop, flag)


def _relayed(stream: Iterator[Any], stop: threading.Event | None, flag: StopFile) -> Iterator[Any]:
    """`stream` as it comes; Stop pressed (`stop`), an error or the reader gone raise `flag`
    (the GPU side removes it when its answer ends)."""
    ended = threading.Event()

    def mirror() -> None:  # wakes as soon as Stop is pressed
        while not ended.is_set():
            if stop.wait(STOP_POLL_S):
                flag.set()
                return

    watcher = None
    if stop is not None:
        watcher = threading.Thread(target=mirror, name="omnipath-zerogpu-stop", daemon=True)
        watcher.start()
    finished = False
    try:
        yield from stream
        finished = True
    finally:
        ended.set()
        if watcher is not None:
            watcher.join()
        if finished:  # the GPU side has ended; a Stop pressed meanwhile leaves no file
            flag.clear()
        else:
            flag.set()
        stream.close()
