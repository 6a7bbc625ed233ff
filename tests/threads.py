"""Run one function in several threads at once, for the tests of the thread-safe parts
(tile cache, slide registry, tile service, session log)."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_together(work: Callable[[int], None], count: int) -> None:
    """Call work(0) … work(count - 1), each in its own thread, released together by a
    barrier so that they really overlap; wait for all of them, then raise the first
    exception any call raised (in a plain thread it would only be printed)."""
    start = threading.Barrier(count)
    raised: list[BaseException] = []

    def run(index: int) -> None:
        try:
            start.wait()
            work(index)
        except BaseException as exc:  # re-raised in the test's thread below
            raised.append(exc)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if raised:
        raise raised[0]
