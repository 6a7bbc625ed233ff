"""A tokenizer for the `tiny` model that builds offline, plus placeholder helpers.

`build_tiny_tokenizer()` trains a byte-level BPE in memory on a small fixed corpus (so any text
encodes, byte by byte at worst) and wraps it in a transformers fast tokenizer. Special tokens
have fixed ids that `tiny_config()` relies on: <pad>=0, <s>=1, </s>=2, <unk>=3, <image>=4,
<mask>=5. No BOS is added automatically: the chat template writes it.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from omnipath.model.configuration import (
    TINY_BOS_ID,
    TINY_EOS_ID,
    TINY_IMAGE_ID,
    TINY_MASK_ID,
    TINY_PAD_ID,
    TINY_UNK_ID,
    TINY_VOCAB_SIZE,
)

# Vicuna-style turns ("USER: ... ASSISTANT: ...</s>"), as LLaVA-1.5 uses.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}USER: {{ message['content'] }}\n"
    "{% else %}ASSISTANT: {{ message['content'] }}{{ eos_token }}\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

_SPECIAL_TOKENS = {
    TINY_PAD_ID: "<pad>",
    TINY_BOS_ID: "<s>",
    TINY_EOS_ID: "</s>",
    TINY_UNK_ID: "<unk>",
    TINY_IMAGE_ID: "<image>",
    TINY_MASK_ID: "<mask>",
}

# Small fixed corpus: the words the demo conversations use, so common words are one token.
_CORPUS = [
    "USER: What does this slide show? ASSISTANT: This is a section of tissue.",
    "USER: Where is the tumor? ASSISTANT: The tumor is in the region [0.120, 0.340, 0.560, 0.780].",
    "Grade the lesion. The lesion is grade 1, grade 2 or grade 3.",
    "Segment the lesion. Here is the mask of the lesion.",
    "The stroma is pink, the nuclei are purple and the background is white.",
    "Nuclear size, nuclear density and texture differ between the lesion and normal tissue.",
    "Detail patch at rows 0 to 7, columns 0 to 7 of the slide, magnification 20x.",
    "Is there necrosis, inflammation, mitosis or invasion in this region?",
    "A carcinoma, an adenoma, a normal gland, a benign lesion, a malignant lesion.",
    "Describe the slide. Count the lesions. Which region is the most atypical?",
    "0 1 2 3 4 5 6 7 8 9 0.0 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 1.0 [ ] , .",
    "yes no there are two lesions there are three lesions there is one lesion",
    "The model is a demonstration model, not a diagnostic one.",
]


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE (vocabulary ≤ 512) with <image>, <mask>, pad/bos/eos and a chat template.

    Deterministic: the same corpus and settings give the same vocabulary and merges.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[_SPECIAL_TOKENS[i] for i in range(len(_SPECIAL_TOKENS))],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens=["<image>", "<mask>"],
        model_max_length=4096,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    for token_id, token in _SPECIAL_TOKENS.items():
        if tokenizer.convert_tokens_to_ids(token) != token_id:  # guards tiny_config's ids
            raise RuntimeError(
                f"tiny tokenizer: {token} got id {tokenizer.convert_tokens_to_ids(token)}"
            )
    return tokenizer


def expand_image_placeholders(
    input_ids: list[int], image_token_id: int, counts: list[int]
) -> list[int]:
    """Replace the i-th image placeholder in `input_ids` by `counts[i]` copies of it.

    E.g. one `<image>` followed later by a detail block: counts = [N, S·P]. Raises
    TokenCountError when the number of placeholders and of counts differ.
    """
    from omnipath.model.configuration import TokenCountError

    found = sum(1 for t in input_ids if t == image_token_id)
    if found != len(counts):
        raise TokenCountError(
            f"The text has {found} image placeholders but {len(counts)} image blocks were given."
        )
    out: list[int] = []
    blocks = iter(counts)
    for token in input_ids:
        if token == image_token_id:
            out.extend([image_token_id] * next(blocks))
        else:
            out.append(token)
    return out
