"""Batched generation: concurrent questions share one `generate` call.

transformers 5's continuous batching (`generate_batch`, `ContinuousBatchingManager`) takes
token ids only, not `inputs_embeds`, and returns no hidden states; our prompts are embeddings
(image and detail tokens merged in) and masks need the `<mask>` hidden states. So: static
batches. A worker thread takes the waiting requests whose generation settings agree (greedy
ones together; a sampled one alone, so its seed gives the same answer as when asked alone),
up to `max_batch_size`, left-pads their embeddings, and runs ONE `generate(inputs_embeds=...,
attention_mask=...)` with:

- a streamer that hands each row's new token to its request (`Request.tokens()`);
- a stopping criterion answering per row (the request's Stop event, its deadline, its stop
  token or its own max_new_tokens), so one row stopping never stops the others;
- transformers' logits processors from the GenerationConfig (temperature, top-p, top-k,
  repetition penalty; greedy at temperature 0);
- `output_hidden_states` / `return_dict_in_generate` when a request keeps the last hidden
  state of some tokens (the engine's `<mask>` tokens).

Requests arriving while a batch runs join the next batch (a KV cache of rows cannot take new
rows mid-way). `position(request)` is a waiting request's place in the queue.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from omnipath.engine.options import AnswerOptions

_END = object()


def batch_key(options: AnswerOptions, request: Request) -> tuple:
    """Requests with equal keys may share a batch: greedy ones with the same repetition
    penalty; a sampled request shares with none (its seed must give its answer alone)."""
    if options.temperature <= 0.0:
        return ("greedy", options.repetition_penalty)
    return ("sampled", id(request))


def generation_config(options: AnswerOptions, **settings: Any) -> GenerationConfig:
    """transformers' settings for `options`' sampling (greedy at temperature 0)."""
    sampled = options.temperature > 0.0
    if sampled:
        settings.update(temperature=options.temperature, top_p=options.top_p, top_k=options.top_k)
    return GenerationConfig(
        do_sample=sampled, repetition_penalty=options.repetition_penalty, **settings
    )


# An end-of-sequence id no token has: without stop ids, the model's own EOS (which generate
# would otherwise take from the model's generation config) must not end a row either.
_NO_TOKEN = 2**62


class Request:
    """One conversation's generation: its prompt embeddings 1×T×D and options in, tokens out.

    `tokens()` yields the token ids as they come (the stop token is not one of them); then
    `stopped` / `timed_out` say why it ended early, `hidden[i]` is the last hidden state (D)
    that predicted token i for every token in `keep_hidden`, and a failure of the batch
    (e.g. torch.OutOfMemoryError) is raised from `tokens()`."""

    def __init__(
        self,
        embeds: torch.Tensor,
        options: AnswerOptions,
        *,
        stop_ids: set[int],
        stop: threading.Event | None = None,
        deadline: float = float("inf"),
        keep_hidden: frozenset[int] = frozenset(),
    ) -> None:
        self.embeds = embeds
        self.options = options
        self.max_new_tokens = int(options.max_new_tokens)
        self.stop_ids = set(stop_ids)
        self.stop = stop
        self.deadline = deadline
        self.keep_hidden = keep_hidden
        self.generated: list[int] = []
        self.hidden: dict[int, torch.Tensor] = {}
        self.stopped = False
        self.timed_out = False
        self.finished = False  # no more tokens for this row
        # seconds: waiting for a batch, the batch's prefill (to the first token), decoding
        self.timings = {"queue": 0.0, "prefill": 0.0, "decode": 0.0}
        self._submitted = self._started = self._first = time.perf_counter()
        self.error: BaseException | None = None
        self._closed = False
        self.cancelled = False
        self._events: queue.SimpleQueue = queue.SimpleQueue()

    def cancel(self) -> None:
        """The reader left (a closed tab): end this row at the next step, as a Stop."""
        self.cancelled = True

    def interrupted(self) -> bool:
        """Stop pressed, reader gone or deadline passed (and remembered which)."""
        if self.cancelled or self.stop is not None and self.stop.is_set():
            self.stopped = True
        elif time.perf_counter() > self.deadline:
            self.timed_out = True
        return self.stopped or self.timed_out

    def needs_hidden(self) -> bool:
        return any(t in self.keep_hidden for t in self.generated)

    def _take(self, token: int) -> None:
        """One new token from the batch (ignored once the row is finished)."""
        if self.finished:
            return
        if self.interrupted() or token in self.stop_ids:
            self.finished = True
            return
        if not self.generated:
            self._first = time.perf_counter()
            self.timings["prefill"] = self._first - self._started
        self.generated.append(token)
        self._events.put(token)
        if len(self.generated) >= self.max_new_tokens:
            self.finished = True

    def _close(self, error: BaseException | None = None) -> None:
        """End the token stream (once); `error` is raised to the reader."""
        self.finished = True
        if self._closed:
            return
        self._closed = True
        if self.generated:
            self.timings["decode"] = time.perf_counter() - self._first
        # without its traceback: the frames of generate hold the batch's activations
        self.error = error.with_traceback(None) if error is not None else None
        self._events.put(_END)

    def tokens(self, poll_s: float = 0.25) -> Iterator[int | None]:
        """The generated ids as they come; None every `poll_s` while none comes (a waiting
        caller may report its place in the queue then). Raises the batch's failure."""
        while True:
            try:
                item = self._events.get(timeout=poll_s)
            except queue.Empty:
                yield None
                continue
            if item is _END:
                break
            yield item
        if self.error is not None:
            raise self.error


class _Rows(BaseStreamer):
    """Demultiplexes `generate`'s new tokens (one per row per step) to the rows' requests."""

    def __init__(self, requests: list[Request]) -> None:
        self.requests = requests

    def put(self, value: torch.Tensor) -> None:
        if value.ndim != 1:  # the prompt (empty with inputs_embeds), not new tokens
            return
        for request, token in zip(self.requests, value.tolist(), strict=True):
            was_finished = request.finished
            request._take(int(token))
            if request.finished and not was_finished and not request.needs_hidden():
                request._close()  # done: no need to wait for the batch's end

    def end(self) -> None:
        pass


class _RowsDone(StoppingCriteria):
    """Per row: finished (stop token, own max_new_tokens), stopped or past its deadline."""

    def __init__(self, requests: list[Request]) -> None:
        self.requests = requests

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        done = [r.finished or r.interrupted() for r in self.requests]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class Batcher:
    """The queue and the worker thread running batched `generate` on one causal LM."""

    def __init__(
        self,
        language_model: Any,
        *,
        max_batch_size: int = 8,
        pad_token_id: int = 0,
        gather_s: float = 2.0,
    ) -> None:
        self.language_model = language_model
        self.max_batch_size = max(1, int(max_batch_size))
        self.pad_token_id = int(pad_token_id)
        self._waiting: list[Request] = []
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self._holds = 0
        self._coming = 0
        self.gather_s = float(gather_s)

    def coming(self) -> AbstractContextManager[None]:
        """Announces a question being prepared (its inputs built) and submitted inside this
        block: a batch about to start waits for it while it has room, as long as questions
        keep arriving (each within `gather_s` of the last), so questions asked together are
        answered together."""
        return self._counted("_coming")

    def submit(self, request: Request) -> Request:
        request._submitted = time.perf_counter()
        with self._cond:
            self._waiting.append(request)
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._loop, name="omnipath-generate", daemon=True
                )
                self._worker.start()
            self._cond.notify()
        return request

    def held(self) -> AbstractContextManager[None]:
        """No new batch starts inside this block (requests queue up); on leaving, the waiting
        ones start together. For callers that know several questions come at once (tests,
        benchmarks)."""
        return self._counted("_holds")

    @contextmanager
    def _counted(self, counter: str) -> Iterator[None]:
        """One more of `counter` for the block; the worker looks again when it ends."""
        with self._cond:
            setattr(self, counter, getattr(self, counter) + 1)
        try:
            yield
        finally:
            with self._cond:
                setattr(self, counter, getattr(self, counter) - 1)
                self._cond.notify()

    def position(self, request: Request) -> int:
        """How many requests wait ahead of `request` (0: its batch runs, or it is done)."""
        with self._cond:
            return self._waiting.index(request) if request in self._waiting else 0

    def withdraw(self, request: Request) -> bool:
        """Take a still-waiting request out of the queue and end it (True), at once; False
        when its batch runs already (it then ends at the batch's next step)."""
        with self._cond:
            if request not in self._waiting:
                return False
            self._waiting.remove(request)
        request._close()
        return True

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    def _next_batch(self) -> list[Request]:
        with self._cond:
            while True:
                for request in [r for r in self._waiting if r.interrupted()]:
                    self._waiting.remove(request)  # stopped while waiting: its slot is free
                    request._close()
                if self._waiting and not self._holds:
                    quiet = time.perf_counter() - self._waiting[-1]._submitted
                    if not self._gathers() or quiet >= self.gather_s:
                        break
                    self._cond.wait(timeout=self.gather_s - quiet)
                    continue
                self._cond.wait()
            first = self._waiting[0]
            key = batch_key(first.options, first)
            batch = [r for r in self._waiting if batch_key(r.options, r) == key]
            batch = batch[: self.max_batch_size]
            started = time.perf_counter()
            for request in batch:
                self._waiting.remove(request)
                request._started = started
                request.timings["queue"] = started - request._submitted
            return batch

    def _gathers(self) -> bool:
        """Whether a batch about to start should wait: questions are still being prepared
        (announced with `coming`, not yet submitted) and the batch has room for them."""
        return self._coming > 0 and len(self._waiting) < self.max_batch_size

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            error: BaseException | None = None
            try:
                self._generate(batch)
            except BaseException as exc:  # handed to every row's reader, raised there
                error = exc
            for request in batch:
                request._close(error)  # rows that waited for their hidden states end here

    def _generate(self, batch: list[Request]) -> None:
        length = max(r.embeds.shape[1] for r in batch)
        first = batch[0].embeds
        embeds = first.new_zeros(len(batch), length, first.shape[2])
        mask = torch.zeros(len(batch), length, dtype=torch.long, device=first.device)
        for row, request in enumerate(batch):  # left padding: every row ends at the same step
            n = request.embeds.shape[1]
            embeds[row, length - n :] = request.embeds[0]
            mask[row, length - n :] = 1
        want_hidden = any(r.keep_hidden for r in batch)
        stop_ids = sorted(set().union(*(r.stop_ids for r in batch)))
        options = batch[0].options
        config = generation_config(
            options,
            max_new_tokens=max(r.max_new_tokens for r in batch),
            eos_token_id=stop_ids or [_NO_TOKEN],
            pad_token_id=self.pad_token_id,
            output_hidden_states=want_hidden,
            return_dict_in_generate=True,
        )
        devices = [first.device] if first.device.type == "cuda" else []
        with torch.inference_mode(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(options.seed)
            out = self.language_model.generate(
                inputs_embeds=embeds,
                attention_mask=mask,
                generation_config=config,
                streamer=_Rows(batch),
                stopping_criteria=StoppingCriteriaList([_RowsDone(batch)]),
            )
        if want_hidden:
            for row, request in enumerate(batch):
                for step, token in enumerate(request.generated):
                    if token in request.keep_hidden:
                        request.hidden[step] = out.hidden_states[step][-1][row, -1]
