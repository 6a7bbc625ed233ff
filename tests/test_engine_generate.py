"""The engine's answer equals a plain greedy loop over the whole input [e_v, e_t, ê_v, ê_t].

The reference is written out here: take the embeddings the engine handed the LLM before its
first one-token step (the prompt, thumbnail and detail tokens merged in), then repeat a FULL
forward of prompt + the tokens generated so far and take the argmax, until a stop token or
max_new_tokens. The engine before issue 11 (prefill into a KV cache, its own decode loop) met
this reference; the engine on transformers' `generate` must meet it too: same greedy tokens on
`tiny`, the LLaVA adapter and omnipath-mini.
"""

from __future__ import annotations

import pytest
import torch

from omnipath.engine import AnswerOptions, Engine
from omnipath.engine.outputs import decode_text
from tests.engine_models import opened_slide, tiny_llava_adapter, tiny_model


@pytest.fixture(scope="module")
def tiny() -> tuple:
    return tiny_model()


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    yield from opened_slide(tmp_path_factory)


class _Inputs:
    """Records the inputs_embeds of every COMPLETED forward of the LLM's decoder (an aborted
    pre-pass is not recorded) and their attention masks."""

    def __init__(self, decoder: torch.nn.Module) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self._handle = decoder.register_forward_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs, output) -> None:
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None:
            self.calls.append((embeds.detach().clone(), kwargs.get("attention_mask")))

    def prompt(self, length: int) -> torch.Tensor:
        """The prompt's embeddings 1×length×D: the calls before the first one-token step,
        concatenated, left padding (masked positions) removed."""
        parts = []
        for embeds, mask in self.calls:
            if embeds.shape[1] == 1 and parts:
                break
            if mask is not None and mask.ndim == 2:
                embeds = embeds[:, mask[0].bool()]
            parts.append(embeds)
        whole = torch.cat(parts, dim=1)
        assert whole.shape[1] == length, (whole.shape, length)
        return whole

    def close(self) -> None:
        self._handle.remove()


@torch.inference_mode()
def reference_greedy(engine: Engine, prompt: torch.Tensor, max_new_tokens: int) -> list[int]:
    """The plain greedy loop: full forward of prompt + generated tokens, argmax, each step."""
    lm = engine.model.language_model
    generated: list[int] = []
    embeds = prompt
    for _ in range(max_new_tokens):
        logits = lm(inputs_embeds=embeds).logits[0, -1]
        token = int(torch.argmax(logits.float()))
        if token in engine._stop_ids:
            break
        generated.append(token)
        new = engine.model.embed_tokens(torch.tensor([[token]], device=embeds.device))
        embeds = torch.cat([embeds, new.to(embeds.dtype)], dim=1)
    return generated


def check_against_reference(engine: Engine, slide, **options) -> None:
    options = AnswerOptions(**{"s": 3, "max_new_tokens": 8, **options})
    recorder = _Inputs(engine.model.language_model.get_decoder())
    try:
        *_, answer = engine.answer(slide, [], "Where is the tumor?", options)
    finally:
        recorder.close()
    prompt = recorder.prompt(answer.tokens["prompt"])
    expected = reference_greedy(engine, prompt, options.max_new_tokens)
    assert answer.tokens["generated"] == len(expected)
    assert answer.text == decode_text(engine.tokenizer, expected, engine.model.config.mask_token_id)


@pytest.mark.parametrize("mode", ["attention", "off"])
def test_tiny_greedy_answer_equals_the_plain_greedy_loop(tiny, slide, mode) -> None:
    model, tokenizer = tiny
    # no stop tokens: every answer runs its max_new_tokens, so every step is compared
    engine = Engine(
        model, tokenizer, model_id="tiny", revision=None, demo=True, stop_token_ids=set()
    )
    check_against_reference(engine, slide, pgdfc_mode=mode, max_new_tokens=12)


def test_llava_adapter_greedy_answer_equals_the_plain_greedy_loop(tiny, slide) -> None:
    _, tokenizer = tiny
    engine = Engine(
        tiny_llava_adapter(),
        tokenizer,
        model_id="llava-tiny",
        revision=None,
        demo=False,
        stop_token_ids=set(),
    )
    check_against_reference(engine, slide, max_new_tokens=10)


@pytest.mark.slow
def test_mini_greedy_answer_equals_the_plain_greedy_loop(slide, monkeypatch) -> None:
    from omnipath.mini.model import DEFAULT_WEIGHTS_DIR

    if not (DEFAULT_WEIGHTS_DIR / "adapter_model.safetensors").is_file():
        pytest.skip("omnipath-mini weights are not in this checkout")
    pytest.importorskip("gguf")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from omnipath.model.loading import LoadOptions, load_model

    loaded = load_model("mini", LoadOptions(dtype="float32", device="cpu"))
    engine = Engine(loaded.model, loaded.tokenizer, model_id="mini", revision=None, demo=True)
    check_against_reference(engine, slide, s=2, max_new_tokens=16)
