"""Batching conversations: chat template, image-token expansion, labels and mask targets.

Sequence layout of one example (token ids, B×L after padding on the right):

    [chat template ... user: <image>×N "\\n" question ("\\n" detail text <image>×P)×S ...
     assistant: answer tokens (labels) ... ]

- The thumbnail's `<image>` expands to N = `num_image_tokens` copies of the image token id;
  each detail patch's `<image>` to P = `tokens_per_patch` copies (the same id, as the model
  expects: placeholder count = N + S·P).
- Labels are -100 everywhere except the assistant turns' own tokens (their end-of-turn
  marker included, so the model learns to stop); `<mask>` in an answer is a label like any
  other token, so the model learns to emit it.
- `mask_targets` K×1×H×W (thumb frame, {0, 1}) follow the order of the `<mask>` tokens in
  the answers, batch-major; `mask_maps` likewise for `<mask>` in user turns (the model's
  mask encoder turns them into those tokens' input embeddings).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from omnipath.engine.prompt import render_chat
from omnipath.train.data import IMAGE_PLACEHOLDER, DatasetError, Example

IGNORE_INDEX = -100


def detail_block_text(texts: Sequence[str]) -> str:
    """The detail blocks appended to the question: each position text, then one `<image>`."""
    return "".join(f"\n{text} {IMAGE_PLACEHOLDER}" for text in texts)


@dataclass
class ConversationCollator:
    """Turns a list of `Example`s into model inputs (see the module docstring).

    Returns the keyword arguments of `OmniPathForConditionalGeneration.forward`:
    input_ids B×L, attention_mask B×L, labels B×L, images B×3×S×S, detail_images (one
    P_b×3×d×d tensor or None per example), tokens_per_patch, mask_maps K_in×1×S×S or None
    with mask_input_positions B×L bool (the user turns' `<mask>` tokens), mask_targets
    K×1×S×S or None (the answers' `<mask>` tokens, reading order).
    """

    tokenizer: object
    image_token_id: int
    mask_token_id: int
    num_image_tokens: int
    tokens_per_patch: int
    max_length: int = 4096
    detail_placement: Literal["user", "after_prompt"] = "user"

    def _pieces(self, example: Example) -> tuple[list[tuple[str, bool]], int | None]:
        """(text, is_label) pieces whose concatenation is the whole rendered chat, and the
        index of the piece that ends with the last question's last token (None when the
        template hides it). That token is what the engine's PGDFC probe reads from: the
        engine tokenizes the question and the detail blocks separately, so we split there."""
        record = example.record
        messages = [{"role": t.role, "content": t.text} for t in record.turns]
        details = detail_block_text([d.text for d in record.details])
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        question = messages[last_user]["content"]
        if details and self.detail_placement == "user":
            messages[last_user] = {"role": "user", "content": question + details}
        pieces: list[tuple[str, bool]] = []
        probe_piece = None
        done = ""
        last_answer = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = render_chat(self.tokenizer, messages[:i], add_generation_prompt=True)
            full = render_chat(self.tokenizer, messages[: i + 1], add_generation_prompt=False)
            if not prompt.startswith(done) or not full.startswith(prompt):
                raise DatasetError(
                    f"record {record.id!r}: the chat template does not render turns as a "
                    "prefix of the next; cannot place labels."
                )
            context = prompt[len(done) :]
            if i == last_user + 1:
                if details and self.detail_placement == "after_prompt":
                    context += details.lstrip("\n") + "\n"
                found = context.rfind(messages[last_user]["content"])
                if found >= 0:
                    cut = found + len(question)
                    pieces.append((context[:cut], False))
                    probe_piece = len(pieces) - 1
                    context = context[cut:]
            pieces.append((context, False))
            pieces.append((full[len(prompt) :], i == last_answer or not record.last_answer_only))
            done = full
        return pieces, probe_piece

    def _encode(
        self, example: Example, *, prompt_only: bool = False
    ) -> tuple[list[int], list[int], int]:
        """(ids, labels, probe position: index of the last question token in ids, or -1)."""
        ids: list[int] = []
        labels: list[int] = []
        pieces, probe_piece = self._pieces(example)
        if prompt_only:  # everything before the final answer: what generation starts from
            pieces = pieces[:-1]
        raw_probe = -1
        for n, (text, is_label) in enumerate(pieces):
            piece = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            ids.extend(piece)
            labels.extend(piece if is_label else [IGNORE_INDEX] * len(piece))
            if n == probe_piece:
                raw_probe = len(ids) - 1
        n_details = len(example.record.details)
        placeholders = ids.count(self.image_token_id)
        if placeholders != 1 + n_details:
            raise DatasetError(
                f"record {example.record.id!r}: {placeholders} <image> placeholder(s) for "
                f"1 thumbnail and {n_details} detail patch(es)."
            )
        if example.details.shape[0] != n_details:
            raise DatasetError(f"record {example.record.id!r}: detail pixels do not match records.")
        # Expand: the first placeholder is the thumbnail, the rest are detail patches.
        out_ids: list[int] = []
        out_labels: list[int] = []
        probe = -1
        seen = 0
        for raw, (token, label) in enumerate(zip(ids, labels, strict=True)):
            if token == self.image_token_id:
                count = self.num_image_tokens if seen == 0 else self.tokens_per_patch
                seen += 1
                out_ids.extend([self.image_token_id] * count)
                out_labels.extend([IGNORE_INDEX] * count)
            else:
                out_ids.append(token)
                out_labels.append(label)
            if raw == raw_probe:
                probe = len(out_ids) - 1
        if prompt_only:
            return out_ids, out_labels, probe
        # Every <mask> must have its map: inputs in user turns, targets in answers.
        n_mask_targets = sum(
            1
            for t, lab in zip(out_ids, out_labels, strict=True)
            if t == self.mask_token_id and lab != IGNORE_INDEX
        )
        n_mask_inputs = out_ids.count(self.mask_token_id) - n_mask_targets
        if n_mask_targets != len(example.mask_targets) or n_mask_inputs != len(example.mask_inputs):
            raise DatasetError(
                f"record {example.record.id!r}: <mask> tokens ({n_mask_inputs} in questions, "
                f"{n_mask_targets} in answers) do not match its mask files "
                f"({len(example.mask_inputs)}, {len(example.mask_targets)})."
            )
        if len(out_ids) > self.max_length:
            raise DatasetError(
                f"record {example.record.id!r} needs {len(out_ids)} tokens, more than "
                f"max_length = {self.max_length}; shorten it or use fewer detail patches."
            )
        return out_ids, out_labels, probe

    def _attention_target(self, example: Example) -> torch.Tensor:
        """The `attend` map on the thumbnail's token grid (g×g cells, raster order, as the
        image tokens): the fraction of each cell it covers; all 0 without one."""
        grid = round(self.num_image_tokens**0.5)
        if example.attend is None or grid * grid != self.num_image_tokens:
            return torch.zeros(self.num_image_tokens)
        cells = torch.nn.functional.adaptive_avg_pool2d(example.attend[None], grid)
        return cells.reshape(-1).float()

    def prompt(self, example: Example) -> dict:
        """Model inputs (batch of one) for generating the example's FINAL answer: the chat up
        to and including the assistant prompt, images and earlier-turn masks as in training.
        The answer's own mask targets are left out."""
        ids, _, _ = self._encode(example, prompt_only=True)
        input_ids = torch.tensor([ids])
        n_inputs = len(example.mask_inputs)
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "images": example.image.unsqueeze(0),
            "detail_images": [example.details if example.details.shape[0] else None],
            "tokens_per_patch": self.tokens_per_patch,
            "mask_maps": torch.stack(example.mask_inputs) if n_inputs else None,
            # earlier answers' <mask> tokens are outputs, so only the user turns' are inputs
            "mask_input_positions": self._user_mask_positions(example, input_ids)
            if n_inputs
            else None,
        }

    def _user_mask_positions(self, example: Example, input_ids: torch.Tensor) -> torch.Tensor:
        _, labels, _ = self._encode(example, prompt_only=True)
        labels_t = torch.tensor([labels])
        return (input_ids == self.mask_token_id) & (labels_t == IGNORE_INDEX)

    def __call__(self, examples: Sequence[Example]) -> dict:
        encoded = [self._encode(e) for e in examples]
        length = max(len(ids) for ids, _, _ in encoded)
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id or 0
        batch = len(examples)
        input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        for row, (ids, labs, _) in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(labs)] = torch.tensor(labs)
            attention_mask[row, : len(ids)] = 1
        mask_maps = [m for e in examples for m in e.mask_inputs]
        mask_targets = [m for e in examples for m in e.mask_targets]
        # Input <mask> tokens are the ones in user turns (not labels); passing their positions
        # keeps the model from guessing "the first K in reading order", which across a batch
        # would take sample 0's answer <mask> before sample 1's question <mask>.
        mask_input_positions = (input_ids == self.mask_token_id) & (labels == IGNORE_INDEX)
        mask_input_positions &= attention_mask.bool()
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "images": torch.stack([e.image for e in examples]),
            "detail_images": [e.details if e.details.shape[0] else None for e in examples],
            "tokens_per_patch": self.tokens_per_patch,
            "mask_maps": torch.stack(mask_maps) if mask_maps else None,
            "mask_input_positions": mask_input_positions if mask_maps else None,
            "mask_targets": torch.stack(mask_targets) if mask_targets else None,
            # For the trainer's probe-attention loss (not model inputs; the trainer pops them).
            "probe_positions": torch.tensor([probe for _, _, probe in encoded]),
            "attention_targets": torch.stack([self._attention_target(e) for e in examples]),
        }
