"""Per-question options of the engine, validated into clear sentences (OptionsError)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from omnipath.errors import OptionsError, echo
from omnipath.pgdfc import validate_mode, validate_s

# Upper limits a person could still mean; beyond them the request is a mistake, not a wish.
MAX_NEW_TOKENS_LIMIT = 4096
MAX_DETAIL_PATCHES = 64
MAX_TIMEOUT_S = 3600.0
MAX_QUESTION_CHARS = 8000


def check_question(question: object) -> str:
    """The question, stripped; OptionsError when it is not text, empty or too long. The one
    check of a question's text: the web layer's parsing and the engine both call it."""
    if not isinstance(question, str) or not question.strip():
        raise OptionsError("The question is empty; type a question about the slide.")
    if len(question) > MAX_QUESTION_CHARS:
        raise OptionsError(
            f"The question is {len(question)} characters long; keep it under {MAX_QUESTION_CHARS}."
        )
    return question.strip()


@dataclass(frozen=True)
class AnswerOptions:
    """How to answer one question.

    pgdfc_mode: "attention" (PGDFC), "random" (S random tissue cells, seeded: the paper's
    ablation baseline) or "off" (thumbnail only). s: detail patches (S). temperature 0 is
    greedy; above 0, seeded sampling with nucleus `top_p` and `top_k` (0: no limit).
    repetition_penalty: 1 is none (transformers' processor, greedy or not). timeout_s: wall
    clock for the whole answer; text generated until then is kept.
    """

    pgdfc_mode: str = "attention"
    s: int = 8
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    timeout_s: float = 120.0
    top_k: int = 0
    repetition_penalty: float = 1.0

    @classmethod
    def from_form(cls, **values: Any) -> AnswerOptions:
        """Validated options from what a form or an API call sent, as sent (a slider's 8.0 is
        the whole number 8; None, text, NaN or infinity get an OptionsError sentence). The UI
        and the named API both come through here."""
        whole = {f.name for f in fields(cls) if type(f.default) is int}
        for name, value in values.items():
            if name in whole and isinstance(value, float) and value.is_integer():
                values[name] = int(value)
        return cls(**values).validate()

    def validate(self, *, max_new_tokens_limit: int = MAX_NEW_TOKENS_LIMIT) -> AnswerOptions:
        """Raise OptionsError with a sentence for a person; return self when all is well."""
        validate_mode(self.pgdfc_mode)
        validate_s(self.s, mode=self.pgdfc_mode)
        if self.s > MAX_DETAIL_PATCHES:
            raise OptionsError(
                f"S = {self.s} detail patches is more than the {MAX_DETAIL_PATCHES} allowed."
            )
        _whole("max_new_tokens", self.max_new_tokens)
        if not 1 <= self.max_new_tokens <= max_new_tokens_limit:
            raise OptionsError(
                f"max_new_tokens = {self.max_new_tokens} is out of range; "
                f"choose between 1 and {max_new_tokens_limit}."
            )
        _number("temperature", self.temperature)
        if not 0.0 <= self.temperature <= 5.0:
            raise OptionsError(
                f"temperature = {self.temperature} is out of range; use 0 (greedy) up to 5."
            )
        _number("top_p", self.top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise OptionsError(f"top_p = {self.top_p} must be above 0 and at most 1.")
        _whole("top_k", self.top_k)
        if not 0 <= self.top_k <= 100_000:
            raise OptionsError(f"top_k = {self.top_k} must be 0 (no limit) or a positive count.")
        _number("repetition_penalty", self.repetition_penalty)
        if not 0.0 < self.repetition_penalty <= 10.0:
            raise OptionsError(
                f"repetition_penalty = {self.repetition_penalty} must be above 0 and at most 10."
            )
        _whole("seed", self.seed)
        if not 0 <= self.seed < 2**63:
            raise OptionsError(f"seed = {self.seed} must be a non-negative whole number.")
        _number("timeout_s", self.timeout_s)
        if not 0.0 < self.timeout_s <= MAX_TIMEOUT_S:
            raise OptionsError(
                f"timeout_s = {self.timeout_s} must be above 0 and at most {MAX_TIMEOUT_S:.0f} s."
            )
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def _whole(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionsError(f"{name} must be a whole number, not {echo(value)}.")


def _number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise OptionsError(f"{name} must be a finite number, not {echo(value)}.")
