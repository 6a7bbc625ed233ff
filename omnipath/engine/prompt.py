"""The prompt as token ids, split where the engine needs it.

Layout (the same as training, `omnipath.train.collator`):

    [chat template ... user: <image>×N "\\n" question | ("\\n" position text " " <image>×P)×S
     | end of the user turn, assistant prompt]

`prefix_ids` ends with the question (Ψ is the attention of its LAST token), the detail blocks
are inserted by the engine once PGDFC has chosen them, `suffix_ids` closes the turn.
Earlier turns are text only; the thumbnail goes into the first user turn. The chat template
is rendered once with private sentinels at the image / mask / detail slots and the rendered
text is cut there, so the template decides every other character.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from omnipath.errors import OptionsError

log = logging.getLogger(__name__)

# Private-use code points: never produced by a tokenizer's template nor typed by a user
# (they are stripped from user text below).
_PRIVATE = "\ue000"
IMAGE_SLOT = f"{_PRIVATE}image{_PRIVATE}"
MASK_SLOT = f"{_PRIVATE}mask{_PRIVATE}"
DETAIL_SLOT = f"{_PRIVATE}details{_PRIVATE}"
IMAGE_TEXT = "<image>"
MASK_TEXT = "<mask>"
ROLES = ("system", "user", "assistant")

# Used only when a tokenizer has no chat template (some test tokenizers).
_FALLBACK_ROLE_PREFIX = {"system": "System: ", "user": "User: ", "assistant": "Assistant: "}


def render_chat(tokenizer, messages: list[dict], *, add_generation_prompt: bool) -> str:
    """The chat as text: the tokenizer's chat template, or a plain fallback without one. The
    one renderer of training (omnipath.train.collator) and serving."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    eos = tokenizer.eos_token or ""
    text = "".join(f"{_FALLBACK_ROLE_PREFIX[m['role']]}{m['content']}{eos}\n" for m in messages)
    return text + (_FALLBACK_ROLE_PREFIX["assistant"] if add_generation_prompt else "")


def clean_text(text: str) -> str:
    """User or earlier-answer text with the placeholders defused: a typed "<image>" must not
    become image tokens (the count checks would fail), an old answer's "<mask>" has no map."""
    return text.replace(_PRIVATE, "").replace(IMAGE_TEXT, "[image]").replace(MASK_TEXT, "[mask]")


def check_history(history: object) -> list[dict[str, str]]:
    """history: list of {"role": "user"|"assistant"|"system", "content": str}."""
    if history is None:
        return []
    if not isinstance(history, list | tuple):
        raise OptionsError("The conversation history must be a list of messages.")
    checked = []
    for index, message in enumerate(history, start=1):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise OptionsError(
                f"Message {index} of the history needs a role (user, assistant or system)."
            )
        content = message.get("content")
        if not isinstance(content, str):
            raise OptionsError(f"Message {index} of the history has no text content.")
        checked.append({"role": message["role"], "content": content})
    return checked


@dataclass(frozen=True)
class PromptIds:
    """prefix_ids: through the question (thumbnail and region placeholders inside);
    image_positions: indices in prefix_ids of the N thumbnail tokens (raster order);
    mask_positions: indices in prefix_ids of the region `<mask>` token (0 or 1);
    suffix_ids: end of the user turn and the assistant prompt."""

    prefix_ids: list[int]
    image_positions: list[int]
    mask_positions: list[int]
    suffix_ids: list[int]


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def build_prompt(
    tokenizer,
    history: Sequence[dict[str, str]],
    question: str,
    *,
    image_token_id: int,
    num_image_tokens: int,
    mask_token_id: int,
    region_mask: bool = False,
    region_text: str | None = None,
) -> PromptIds:
    """Token ids of the conversation so far plus the new question (see module docstring).

    region_mask: put one `<mask>` (the user's region, embedded by the mask encoder) before the
    question; region_text: a sentence describing the region instead (models without masks).
    """
    messages = [{"role": m["role"], "content": clean_text(m["content"])} for m in history]
    lead = ""
    if region_mask:
        lead = f"In the region {MASK_SLOT}: "
    elif region_text:
        lead = f"{region_text} "
    messages.append({"role": "user", "content": lead + clean_text(question) + DETAIL_SLOT})
    first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[first_user]["content"] = f"{IMAGE_SLOT}\n" + messages[first_user]["content"]
    rendered = render_chat(tokenizer, messages, add_generation_prompt=True)
    if rendered.count(IMAGE_SLOT) != 1 or rendered.count(DETAIL_SLOT) != 1:
        raise OptionsError(
            "The model's chat template dropped part of the conversation; it cannot be used "
            "with images."
        )
    prefix_text, suffix_text = rendered.split(DETAIL_SLOT)
    before_image, after_image = prefix_text.split(IMAGE_SLOT)
    prefix_ids = _encode(tokenizer, before_image)
    image_positions = list(range(len(prefix_ids), len(prefix_ids) + num_image_tokens))
    prefix_ids += [image_token_id] * num_image_tokens
    mask_positions: list[int] = []
    if region_mask:
        before_mask, after_mask = after_image.split(MASK_SLOT)
        prefix_ids += _encode(tokenizer, before_mask)
        mask_positions.append(len(prefix_ids))
        prefix_ids.append(mask_token_id)
        prefix_ids += _encode(tokenizer, after_mask)
    else:
        prefix_ids += _encode(tokenizer, after_image)
    suffix_ids = _encode(tokenizer, suffix_text)
    return PromptIds(prefix_ids, image_positions, mask_positions, suffix_ids)


def detail_block_ids(
    tokenizer, position_texts: Sequence[str], *, image_token_id: int, tokens_per_patch: int
) -> list[list[int]]:
    """One id list per detail patch: "\\n" + its position text + " ", then P image tokens."""
    return [
        _encode(tokenizer, f"\n{text} ") + [image_token_id] * tokens_per_patch
        for text in position_texts
    ]


def stop_token_ids_of(model, tokenizer) -> set[int]:
    """End of answer: the EOS ids, plus the chat template's end-of-turn marker when it is a
    special token (ChatML's <|im_end|>, Llama 3's <|eot_id|>)."""
    stop: set[int] = set()
    for source in (
        getattr(tokenizer, "eos_token_id", None),
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        getattr(model.language_model.config, "eos_token_id", None),
    ):
        if isinstance(source, int):
            stop.add(source)
        elif isinstance(source, list | tuple):
            stop.update(int(s) for s in source)
    if getattr(tokenizer, "chat_template", None):
        try:
            marker = "\ue000end\ue000"
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}],
                tokenize=False,
            )
            after = text.split(marker, 1)[1]
            ids = tokenizer(after, add_special_tokens=False)["input_ids"]
            special = set(getattr(tokenizer, "all_special_ids", []))
            if ids and ids[0] in special:
                stop.add(int(ids[0]))
        except Exception:  # a template that cannot render this probe: EOS alone
            log.debug("no end-of-turn marker found in the chat template", exc_info=True)
    return stop
