"""The original LLaVA conversation templates, as chat templates (Jinja) for the tokenizer.

Checkpoints in the original LLaVA format (haotian-liu/LLaVA and its descendants: Quilt-LLaVA,
LLaVA-Med) ship a tokenizer without a chat template: the prompt was built in Python by
`llava.conversation.Conversation.get_prompt()`. These templates render the same text, so
the engine builds the prompt the checkpoint was trained on:

- `vicuna_v1` (LLaVA-1.5, Quilt-LLaVA): "<s>{system} USER: <image>\\n{question} ASSISTANT:",
  an answer ends with "</s>";
- `llava_v1`: the same turns, the system prompt saying "human" instead of "user";
- `mistral_instruct` (LLaVA-Med v1.5): "<s>[INST] <image>\\n{question} [/INST]", no system
  prompt (one given goes into the first turn between <<SYS>> markers, as LLaMA-2 style does);
  an answer is " {answer} </s>";
- `llama_3` (LLaVA-NeXT's Llama-3 checkpoints): Llama 3's header/eot turns with LLaVA's
  system prompt.

The choice (`choose_conversation`): `--conversation` when given, else the tokenizer's own
chat_template when it has one (transformers' convention), else from the checkpoint itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omnipath.errors import ModelLoadError

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the human's questions."
)
LLAMA_3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual "
    "content that the user provides, and assist the user with a variety of tasks using natural "
    "language."
)

# A leading system message replaces the default one; `system` and `turns` are set below.
_SYSTEM_SPLIT = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = default_system %}{% set turns = messages %}{% endif %}"
)


def _two_separator_template(default_system: str) -> str:
    """Conversation style TWO (sep " ", sep2 "</s>"), roles USER / ASSISTANT."""
    return (
        f"{{% set default_system = {default_system!r} %}}"
        + _SYSTEM_SPLIT
        + "{{ bos_token }}{{ system }} "
        "{% for message in turns %}"
        "{% if message['role'] == 'user' %}USER: {{ message['content'] }} "
        "{% else %}ASSISTANT: {{ message['content'] }}{{ eos_token }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )


_MISTRAL_INSTRUCT = (
    "{% set default_system = '' %}" + _SYSTEM_SPLIT + "{{ bos_token }}"
    "{% for message in turns %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.first and system %}"
    "{% set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "[INST] {{ content }} [/INST]"
    "{% else %} {{ message['content'] }} {{ eos_token }}{% endif %}"
    "{% endfor %}"
)

_LLAMA_3 = (
    f"{{% set default_system = {LLAMA_3_SYSTEM!r} %}}"
    + _SYSTEM_SPLIT
    + "{{ bos_token }}<|start_header_id|>system<|end_header_id|>\n\n{{ system }}<|eot_id|>"
    "{% for message in turns %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

CONVERSATIONS: Mapping[str, str] = {
    "vicuna_v1": _two_separator_template(VICUNA_SYSTEM),
    "llava_v1": _two_separator_template(LLAVA_V1_SYSTEM),
    "mistral_instruct": _MISTRAL_INSTRUCT,
    "llama_3": _LLAMA_3,
}


def conversation_template(name: str) -> str:
    """The chat template (Jinja) of the conversation `name`; ModelLoadError when unknown."""
    try:
        return CONVERSATIONS[name]
    except KeyError:
        raise ModelLoadError(
            f"The conversation template {name!r} is not known; use one of "
            f"{', '.join(CONVERSATIONS)}."
        ) from None


def checkpoint_conversation(config: Mapping[str, Any], names: Sequence[str] = ()) -> str:
    """The conversation an original-LLaVA checkpoint was trained with, from its config.json
    and names (model id, `_name_or_path`): Mistral → `mistral_instruct`; Llama 3 (a name
    saying so, or its 128k vocabulary) → `llama_3`; otherwise Vicuna → `vicuna_v1` (what
    LLaVA-1.5 and Quilt-LLaVA were trained and evaluated with)."""
    architectures = config.get("architectures") or []
    if config.get("model_type") == "llava_mistral" or "LlavaMistralForCausalLM" in architectures:
        return "mistral_instruct"
    lowered = " ".join([*names, str(config.get("_name_or_path", ""))]).lower()
    if (
        any(marker in lowered for marker in ("llama-3", "llama3", "llama_3"))
        or int(config.get("vocab_size") or 0) >= 128000
    ):
        return "llama_3"
    return "vicuna_v1"


def choose_conversation(tokenizer: Any, override: str | None, fallback: str | None) -> str | None:
    """The chat template the tokenizer should use: the named `override`, else its own, else
    the named `fallback` (None: leave the tokenizer as it is). Returns the name chosen, or
    None when the tokenizer's own template is kept."""
    if override is not None:
        tokenizer.chat_template = conversation_template(override)
        return override
    if getattr(tokenizer, "chat_template", None) or fallback is None:
        return None
    tokenizer.chat_template = conversation_template(fallback)
    return fallback
