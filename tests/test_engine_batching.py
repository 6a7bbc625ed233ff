"""Concurrent questions share one batched generation (omnipath.engine.batcher): each answer
equals the same question answered alone, a Stop ends only its own answer, and a waiting
question learns its place in the queue."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from omnipath.engine import Answer, AnswerOptions, Engine, Queued
from omnipath.engine.batcher import generation_config
from tests.engine_models import opened_slide, tiny_model

QUESTIONS = (
    "Where is the tumor?",
    "Describe the tissue on the left side of this slide in detail.",
    "Grade?",
)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    yield from opened_slide(tmp_path_factory)


@pytest.fixture(scope="module")
def engine() -> Engine:
    model, tokenizer = tiny_model()  # float32: left padding changes no greedy token
    return Engine(model, tokenizer, model_id="tiny", revision=None, demo=True, stop_token_ids=set())


def _options(**kwargs) -> AnswerOptions:
    return AnswerOptions(**{"s": 2, "max_new_tokens": 10, **kwargs})


def _batch_sizes(engine: Engine) -> tuple[list[int], object]:
    """Records the batch size of each generate prefill (decoder calls longer than 1)."""
    sizes: list[int] = []

    def record(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and embeds.shape[1] > 1 and "attention_mask" in kwargs:
            sizes.append(int(embeds.shape[0]))

    decoder = engine.model.language_model.get_decoder()
    return sizes, decoder.register_forward_pre_hook(record, with_kwargs=True)


def _together(engine: Engine, slide, questions, stops=None, **options) -> list[list]:
    """Asks the questions from threads, all queued before one batch starts."""
    stops = stops or [None] * len(questions)
    results: list[list] = [[] for _ in questions]
    errors: list[BaseException] = []

    def ask(index: int) -> None:
        try:
            stream = engine.answer(
                slide, [], questions[index], _options(**options), stop=stops[index]
            )
            for item in stream:
                results[index].append(item)
                if stops[index] is not None and isinstance(item, str):
                    stops[index].set()  # Stop pressed after its first text
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with engine.batcher.held():
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
        for thread in threads:
            thread.start()
        while engine.batcher.waiting < len(questions) and not errors:
            time.sleep(0.01)
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return results


@pytest.mark.parametrize("count", [2, 3])
def test_concurrent_answers_each_equal_the_answer_alone(engine: Engine, slide, count) -> None:
    questions = QUESTIONS[:count]
    alone = [list(engine.answer(slide, [], q, _options()))[-1] for q in questions]
    sizes, hook = _batch_sizes(engine)
    try:
        together = _together(engine, slide, questions)
    finally:
        hook.remove()
    assert sizes == [count]  # one generate for all of them
    for items, single in zip(together, alone, strict=True):
        answer = items[-1]
        assert isinstance(answer, Answer)
        assert answer.tokens["generated"] == single.tokens["generated"] == 10
        assert answer.text == single.text
        assert "".join(i for i in items if isinstance(i, str)) == answer.text


def test_stop_ends_only_its_own_row(engine: Engine, slide) -> None:
    alone = [list(engine.answer(slide, [], q, _options(max_new_tokens=30)))[-1] for q in QUESTIONS]
    stops = [None, threading.Event(), None]
    together = _together(engine, slide, QUESTIONS, stops=stops, max_new_tokens=30)
    stopped = together[1][-1]
    assert stopped.stopped and stopped.tokens["generated"] < 30
    for index in (0, 2):
        answer = together[index][-1]
        assert not answer.stopped and answer.text == alone[index].text
        assert answer.tokens["generated"] == 30


def test_a_waiting_question_learns_its_place_and_a_stop_frees_it_at_once(
    engine: Engine, slide
) -> None:
    stop = threading.Event()
    items: list = []
    with engine.batcher.held():  # a batch is busy: nothing starts
        waiting = engine.answer(slide, [], "Where?", _options(), stop=stop, queue_updates=True)
        thread = threading.Thread(target=lambda: items.extend(waiting))
        thread.start()
        while not items:
            time.sleep(0.01)
        assert items[0] == Queued(ahead=0) and engine.batcher.waiting == 1
        stop.set()  # pressed while still queued
        thread.join(timeout=60)
        assert not thread.is_alive() and engine.batcher.waiting == 0
    answer = items[-1]
    assert answer.stopped and answer.tokens["generated"] == 0


def test_a_closed_stream_leaves_the_queue(engine: Engine, slide) -> None:
    with engine.batcher.held():
        stream = engine.answer(slide, [], "Where?", _options(), queue_updates=True)
        assert next(stream) == Queued(ahead=0) and engine.batcher.waiting == 1
        stream.close()  # the browser tab went away
        assert engine.batcher.waiting == 0


def test_sampled_answers_keep_their_seed_when_asked_together(engine: Engine, slide) -> None:
    options = {"temperature": 1.0, "seed": 7}
    alone = list(engine.answer(slide, [], QUESTIONS[0], _options(**options)))[-1]
    together = _together(engine, slide, [QUESTIONS[0], QUESTIONS[0]], **options)
    assert [items[-1].text for items in together] == [alone.text, alone.text]


def test_options_become_transformers_logits_processors() -> None:
    greedy = generation_config(AnswerOptions(repetition_penalty=1.3), max_new_tokens=5)
    assert greedy.do_sample is False and greedy.repetition_penalty == 1.3
    sampled = generation_config(AnswerOptions(temperature=0.7, top_p=0.9, top_k=40))
    assert sampled.do_sample is True
    assert (sampled.temperature, sampled.top_p, sampled.top_k) == (0.7, 0.9, 40)


def test_out_of_memory_in_a_batch_reaches_each_answer_and_the_next_batch_works(
    engine: Engine, slide, monkeypatch
) -> None:
    from omnipath.errors import DeviceOutOfMemoryError

    head = engine.model.language_model.get_output_embeddings()

    def exhausted(hidden):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(head, "forward", exhausted)
    with pytest.raises(DeviceOutOfMemoryError, match="ran out of memory") as info:
        list(engine.answer(slide, [], QUESTIONS[0], _options()))
    assert "9.00 GiB" in (info.value.detail or "")
    monkeypatch.undo()
    assert isinstance(list(engine.answer(slide, [], QUESTIONS[0], _options()))[-1], Answer)


def test_questions_asked_together_are_answered_in_one_batch(engine: Engine, slide) -> None:
    """No hold: the batcher waits for questions still being prepared, so three questions
    asked at the same moment share one generate."""
    streams = [engine.answer(slide, [], q, _options()) for q in QUESTIONS]  # checked here
    gate = threading.Barrier(len(streams))
    results: list[list] = [[] for _ in streams]

    def consume(index: int) -> None:
        gate.wait()
        results[index].extend(streams[index])

    sizes, hook = _batch_sizes(engine)
    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(streams))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        hook.remove()
    assert sizes == [len(streams)]
    assert all(isinstance(items[-1], Answer) for items in results)
