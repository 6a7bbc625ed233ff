"""The engine: one loaded model answering questions about slides, streaming.

One question (DESIGN.md "One question, end to end"):

    thumbnail (cached per slide) → vision → e_v
    chat template over history + question → prefix ids          (omnipath.engine.prompt)
    the probe, a pre-pass on [e_v, e_t]: layer 0's norm, q/k and RoPE → Ψ   (omnipath.pgdfc)
    Ψ + tissue → the plan: cells, level-0 reads, position texts, budget   (pgdfc.plan_details)
    read and encode the details (detail cache) → ê_v, ê_t
    the whole input [e_v, e_t, ê_v, ê_t] → transformers' generate, batched with the other
    questions being answered                                      (omnipath.engine.batcher)
    `<mask>` hidden states → mask decoder → masks on level 0; boxes parsed from the text

Model calls run under `torch.inference_mode()` in helper methods (generate in the batcher's
thread); the generator itself only yields between them, so the caller's code never runs
inside inference mode.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from omnipath import pgdfc
from omnipath.coords import L0Rect, ThumbFrame
from omnipath.engine.batcher import Batcher, Request
from omnipath.engine.details import DetailCache
from omnipath.engine.masks import region_map, region_sentence
from omnipath.engine.options import MAX_NEW_TOKENS_LIMIT, AnswerOptions, check_question
from omnipath.engine.outputs import decode_text, dtype_of, finish_answer
from omnipath.engine.prompt import (
    PromptIds,
    build_prompt,
    check_history,
    detail_block_ids,
    stop_token_ids_of,
)
from omnipath.engine.results import Answer, Queued, Region
from omnipath.engine.thumbs import Look, ThumbFeatures, ThumbnailCache, look_at
from omnipath.errors import DeviceOutOfMemoryError, OptionsError
from omnipath.model.protocol import EngineModel

STAGES = tuple("thumbnail vision probe detail_read detail_encode queue prefill decode".split())
# Answer.tokens: prompt (all input tokens), thumbnail (N image tokens), detail (detail blocks:
# image tokens + position texts), detail_patches (kept), detail_patches_dropped (budget),
# generated, masks (generated <mask> tokens), history_messages, thumbnail_cached (0/1),
# detail_patches_cached (patches taken from the detail cache).
TOKEN_COUNTS = tuple(
    "prompt thumbnail detail detail_patches detail_patches_dropped generated masks "
    "history_messages thumbnail_cached detail_patches_cached".split()
)


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work so a stage's time is its own (CPU: nothing to wait for)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class _Asked:
    """One question as `Engine.answer` checked it; `key` is the slide's cache identity."""

    slide: Any
    key: Any
    look: Look
    history: list[dict]
    question: str
    options: AnswerOptions
    l0_region: L0Rect | None
    stop: threading.Event | None


@dataclass
class _Prepared:
    """One question ready to generate: the whole input [e_v, e_t, ê_v, ê_t] (1×T×D)."""

    embeds: torch.Tensor
    thumb: ThumbFeatures
    regions: list[Region]


class Engine:
    """One loaded model (OmniPath or the LLaVA adapter) answering questions about slides.

    Thread-safe: questions are prepared (vision, probe, detail reads) one at a time, and
    their answers generated together, up to `max_batch_size` per batch (`Batcher`).
    """

    def __init__(
        self,
        model: EngineModel,
        tokenizer: Any,
        *,
        model_id: str,
        revision: str | None,
        demo: bool,
        quantization: str | None = None,
        thumb_cache_size: int = 8,
        max_new_tokens_limit: int = MAX_NEW_TOKENS_LIMIT,
        stop_token_ids: set[int] | None = None,
        detail_cache_size: int = 256,
        max_batch_size: int = 8,
    ) -> None:
        """stop_token_ids: the tokens that end an answer (default: EOS and the chat template's
        end-of-turn marker); an empty set makes every answer run to max_new_tokens, which is
        what benchmarks comparing latencies need. detail_cache_size: encoded detail patches
        kept for follow-up questions (0: none). max_batch_size: answers generated at once."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.revision = revision
        self.demo = demo
        self.quantization = quantization
        self.max_new_tokens_limit = max_new_tokens_limit
        self.thumbs = ThumbnailCache(thumb_cache_size)
        self.details = DetailCache(detail_cache_size)
        self._prepare_lock = threading.Lock()
        self._stop_ids = (
            stop_token_ids_of(model, tokenizer) if stop_token_ids is None else set(stop_token_ids)
        )
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = min(self._stop_ids, default=0)
        self.batcher = Batcher(
            model.language_model, max_batch_size=max_batch_size, pad_token_id=pad
        )

    @property
    def max_batch_size(self) -> int:
        return self.batcher.max_batch_size

    @max_batch_size.setter
    def max_batch_size(self, value: int) -> None:
        self.batcher.max_batch_size = max(1, int(value))

    # --- facts about the model ----------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def supports_masks(self) -> bool:
        return bool(getattr(self.model, "supports_masks", False))

    @property
    def info(self) -> dict:
        return {
            "model_id": self.model_id,
            "revision": self.revision,
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "device": str(self.device),
            "quantization": self.quantization,
            "demo": self.demo,
            "supports_masks": self.supports_masks,
        }

    @property
    def _pgdfc_config(self) -> Any:
        return getattr(self.model.config, "pgdfc_config", None)

    def _setting(self, name: str, default: Any) -> Any:
        value = getattr(self._pgdfc_config, name, None)
        return default if value is None else value

    @property
    def context_length(self) -> int | None:
        config = self.model.language_model.config
        return getattr(config, "max_position_embeddings", None)

    # --- the public call ----------------------------------------------------------------

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
    ) -> Iterator[str | Queued | Answer]:
        """Stream the answer to `question` about `slide`: text deltas (str), then exactly one
        Answer as the last item.

        history: earlier turns of THIS slide's conversation, [{"role", "content"}] (text only;
        a new slide is a new conversation, the caller's job). l0_region: a level-0 rectangle
        the user points at (a `<mask>` input, or a sentence for models without masks).
        slide_id: the slide's identity for the thumbnail and detail caches (None: this slide
        object, for as long as it lives). queue_updates: also yield `Queued(ahead)` while the
        answer waits for its batch (ahead: questions before it in the queue).
        Bad options raise OptionsError here, at call time, and so does S above the slide's
        tissue cells (the thumbnail and its tissue grid are made here; cached per slide), so
        a caller can refuse the question before logging it. TokenBudgetError and
        DeviceOutOfMemoryError are raised while iterating, before any text.
        """
        options = options if options is not None else AnswerOptions()
        if not isinstance(options, AnswerOptions):
            raise OptionsError("options must be AnswerOptions.")
        options.validate(max_new_tokens_limit=self.max_new_tokens_limit)
        question = check_question(question)
        checked_history = check_history(history)
        if l0_region is not None and not isinstance(l0_region, L0Rect):
            raise OptionsError("The region must be a level-0 rectangle (x, y, w, h).")
        key = slide_id if slide_id is not None else slide
        look = self._look(slide, key)
        if options.pgdfc_mode != "off":
            pgdfc.check_s_against_tissue(options.s, self._tissue_cells(look))
        asked = _Asked(slide, key, look, checked_history, question, options, l0_region, stop)
        return self._stream(asked, queue_updates)

    def _stream(self, asked: _Asked, queue_updates: bool) -> Iterator[str | Queued | Answer]:
        out_of_memory: str | None = None
        try:
            yield from self._answer(asked, queue_updates)
        except torch.OutOfMemoryError as exc:
            out_of_memory = str(exc)
        # leave the except block first: the traceback holds the activations
        if out_of_memory is not None:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise DeviceOutOfMemoryError(
                "The GPU ran out of memory while answering; the memory was freed. Try again "
                "with fewer detail patches (S), fewer new tokens or a shorter conversation.",
                detail=out_of_memory,
            )

    # --- the stages ---------------------------------------------------------------------

    def _answer(self, asked: _Asked, queue_updates: bool) -> Iterator[str | Queued | Answer]:
        start, options, stop = time.perf_counter(), asked.options, asked.stop
        timings = dict.fromkeys(STAGES, 0.0)
        tokens = dict.fromkeys(TOKEN_COUNTS, 0)
        answer = Answer(text="", model_id=self.model_id, revision=self.revision)
        answer.timings, answer.tokens = timings, tokens
        answer.stopped = stop is not None and stop.is_set()
        answer.timed_out = time.perf_counter() > start + options.timeout_s
        if answer.stopped or answer.timed_out:  # before any model work
            yield finish_answer(self.model, answer, start, asked.look.frame, None, [])
            return
        with self.batcher.coming():  # answered with the questions asked at the same time
            with self._prepare_lock:
                ready = self._prepare(asked, answer)
            answer.regions = ready.regions
            mask_id = self.model.config.mask_token_id
            request = Request(
                ready.embeds,
                options,
                stop_ids=self._stop_ids,
                stop=stop,
                deadline=start + options.timeout_s,
                keep_hidden=frozenset({mask_id}) if self.supports_masks else frozenset(),
            )
            self.batcher.submit(request)
        emitted = ""
        for delta in self._deltas(request, queue_updates):
            if isinstance(delta, str):
                emitted += delta
            yield delta
        timings.update(request.timings)
        answer.stopped, answer.timed_out = request.stopped, request.timed_out
        tokens["generated"] = len(request.generated)
        answer.text = decode_text(
            self.tokenizer, request.generated, self.model.config.mask_token_id
        )
        if answer.text.startswith(emitted) and len(answer.text) > len(emitted):
            yield answer.text[len(emitted) :]
        mask_hidden = [request.hidden[i] for i, t in enumerate(request.generated) if t == mask_id]
        tokens["masks"] = (
            len(mask_hidden) if self.supports_masks else request.generated.count(mask_id)
        )
        yield finish_answer(
            self.model, answer, start, ready.thumb.frame, ready.thumb.feature_map, mask_hidden
        )

    def _deltas(self, request: Request, queue_updates: bool) -> Iterator[str | Queued]:
        """The request's text as it grows (whole characters only), and `Queued` places while
        it waits. A Stop while queued frees the slot at once; so does closing the stream (a
        closed tab), which otherwise ends its row at the batch's next step."""
        emitted, ahead = "", None
        try:
            for token in request.tokens():
                if token is not None:
                    text = decode_text(
                        self.tokenizer, request.generated, self.model.config.mask_token_id
                    )
                    if not text.endswith("\ufffd") and text.startswith(emitted):
                        if len(text) > len(emitted):
                            yield text[len(emitted) :]
                            emitted = text
                elif request.interrupted():
                    self.batcher.withdraw(request)
                elif queue_updates and not request.generated:
                    position = self.batcher.position(request)
                    if position != ahead:
                        ahead = position
                        yield Queued(ahead=position)
        finally:
            if not request.finished:
                request.cancel()
                self.batcher.withdraw(request)

    def _prepare(self, asked: _Asked, answer: Answer) -> _Prepared:
        """Thumbnail, prompt, the probe's pre-pass, the plan, the details read and encoded:
        the whole input [e_v, e_t, ê_v, ê_t]."""
        timings, tokens = answer.timings, answer.tokens
        slide, key, look, options = asked.slide, asked.key, asked.look, asked.options
        thumb = self._thumbnail(key, look, timings, tokens)
        region_embeds, region_text = None, None
        if asked.l0_region is not None:
            region_embeds, region_text = self._region_input(asked.l0_region, thumb.frame)
        prompt = build_prompt(
            self.tokenizer,
            asked.history,
            asked.question,
            image_token_id=self.model.config.image_token_id,
            num_image_tokens=self.model.num_image_tokens,
            mask_token_id=self.model.config.mask_token_id,
            region_mask=region_embeds is not None,
            region_text=region_text,
        )
        base_tokens = len(prompt.prefix_ids) + len(prompt.suffix_ids)
        pgdfc.fit_detail_budget(  # refuse before any model work when even no detail fits
            base_tokens=base_tokens,
            patch_tokens=[],
            max_new_tokens=options.max_new_tokens,
            context_length=self.context_length,
        )
        tokens.update(thumbnail=self.model.num_image_tokens, history_messages=len(asked.history))
        with torch.inference_mode():
            prefix = self._embed(prompt.prefix_ids, thumb.tokens, region_embeds)
        plan, detail_tokens = None, None
        if options.pgdfc_mode != "off":
            psi = self._probe(prefix, prompt, timings)
            plan = self._plan(slide, look, thumb, psi, prompt, base_tokens, options)
            detail_tokens = self._detail_features(slide, key, plan, timings, tokens)
        blocks = plan.block_ids if plan is not None else []
        rest_ids = [t for block in blocks for t in block] + list(prompt.suffix_ids)
        with torch.inference_mode():
            rest = self._embed(rest_ids, detail_tokens, None)
        tokens["detail"] = sum(len(b) for b in blocks)
        tokens["prompt"] = base_tokens + tokens["detail"]
        regions = []
        if plan is not None:
            regions = [
                Region(rank=cell.rank, score=cell.score, l0_rect=rect)
                for cell, rect in zip(plan.cells, plan.l0_rects, strict=True)
            ]
            tokens.update(detail_patches=len(regions), detail_patches_dropped=plan.dropped)
        return _Prepared(torch.cat([prefix, rest], dim=1), thumb, regions)

    def _look(self, slide: Any, key: Any) -> Look:
        """The slide's square thumbnail and tissue grid (cached features when seen)."""
        side, grid = int(self.model.thumb_side), self.model.grid
        pad_fill = getattr(self.model, "pad_fill", None)
        return look_at(slide, key, self.thumbs, side, grid, pad_fill)

    def _tissue_cells(self, look: Look) -> np.ndarray:
        return pgdfc.tissue_cells(look.tissue, self._setting("background_threshold", 0.2))

    def _thumbnail(self, key: Any, look: Look, timings: dict, tokens: dict) -> ThumbFeatures:
        """The slide's thumbnail with its vision features (encoded now unless cached)."""
        tokens["thumbnail_cached"] = int(look.features is not None)
        if look.features is not None:
            return look.features
        timings["thumbnail"] = look.seconds
        started = time.perf_counter()
        with torch.inference_mode():
            pixels = pgdfc.images_to_tensor([look.image]).to(self.device)
            thumb_tokens, feature_map = self.model.encode_images(pixels)
        _sync(self.device)
        timings["vision"] = time.perf_counter() - started
        features = ThumbFeatures(
            look.frame, look.image, look.tissue, thumb_tokens[0], feature_map[0]
        )
        self.thumbs.put(key, int(self.model.thumb_side), features)
        return features

    def _region_input(
        self, l0_region: L0Rect, frame: ThumbFrame
    ) -> tuple[torch.Tensor | None, str | None]:
        """The user's region: a `<mask>` embedding (1×D) or, without a mask encoder, words."""
        clipped = l0_region.clip(frame.l0_width, frame.l0_height)
        if clipped.w <= 0 or clipped.h <= 0:
            raise OptionsError("The region you pointed at lies outside the slide.")
        if not self.supports_masks:
            return None, region_sentence(clipped, frame.l0_width, frame.l0_height)
        with torch.inference_mode():
            region = region_map(clipped, frame).to(
                self.device, dtype_of(self.model, "mask_encoder")
            )
            embeds = self.model.encode_masks(region)
        return embeds, None

    def _embed(self, ids: list[int], image_tokens: Any, mask_embeds: Any) -> torch.Tensor:
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        embeds = self.model.embed_tokens(input_ids)
        config = self.model.config
        has_slots = any(t in (config.image_token_id, config.mask_token_id) for t in ids)
        if has_slots:
            embeds = self.model.merge_embeddings(input_ids, embeds, image_tokens, mask_embeds)
        return embeds

    def _probe(self, prefix: torch.Tensor, prompt: PromptIds, timings: dict) -> np.ndarray:
        """Ψ on the grid, from the pre-pass over [e_v, e_t] (no full forward)."""
        started = time.perf_counter()
        layer = int(self._setting("probe_layer", 0))
        with torch.inference_mode():
            row = pgdfc.probe_prepass(self.model.language_model, prefix, layer).mean(dim=1)
        _sync(self.device)
        timings["probe"] = time.perf_counter() - started
        return pgdfc.psi_grid(row[0], prompt.image_positions, self.model.grid)

    def _plan(
        self,
        slide: Any,
        look: Look,
        thumb: ThumbFeatures,
        psi: np.ndarray,
        prompt: PromptIds,
        base_tokens: int,
        options: AnswerOptions,
    ) -> pgdfc.DetailPlan:
        """The model's PGDFC settings applied to this question (omnipath.pgdfc.plan_details)."""
        per_patch = int(self._setting("tokens_per_patch", 1))
        return pgdfc.plan_details(
            psi=psi,
            tissue=self._tissue_cells(look),
            tissue_fraction=look.tissue,
            frame=thumb.frame,
            mode=options.pgdfc_mode,
            s=options.s,
            seed=options.seed,
            context=float(self._setting("context_fraction", pgdfc.DETAIL_CONTEXT)),
            slide_mpp=pgdfc.slide_mpp(slide),
            detail_mpp=10.0 / float(self._setting("detail_magnification", 20.0)),
            # what the encoder consumes per detail patch (OmniPath: max(detail_scale_factors)
            # × the base tile; the LLaVA adapter: its thumbnail side)
            encoder_side=int(getattr(self.model, "detail_side", self.model.thumb_side)),
            block_ids=lambda texts: detail_block_ids(
                self.tokenizer,
                texts,
                image_token_id=self.model.config.image_token_id,
                tokens_per_patch=per_patch,
            ),
            base_tokens=base_tokens,
            max_new_tokens=options.max_new_tokens,
            context_length=self.context_length,
        )

    def _detail_features(
        self, slide: Any, key: Any, plan: pgdfc.DetailPlan, timings: dict, tokens: dict
    ) -> torch.Tensor | None:
        """The plan's patches as tokens S×P×D: from the detail cache, else read (in parallel)
        and encoded (one batch); the cache is filled."""
        if not plan.read_rects:
            return None
        per_patch = int(self._setting("tokens_per_patch", 1))
        keys = [self.details.key(key, r, plan.out_side, per_patch) for r in plan.read_rects]
        parts = [self.details.get(k) for k in keys]
        missing = [i for i, part in enumerate(parts) if part is None]
        tokens["detail_patches_cached"] = len(parts) - len(missing)
        if missing:
            started = time.perf_counter()
            rects = [plan.read_rects[i] for i in missing]
            patches = pgdfc.read_detail_patches(slide, rects, plan.out_side)
            timings["detail_read"] = time.perf_counter() - started
            started = time.perf_counter()
            with torch.inference_mode():
                encoded = self.model.encode_detail_patches(patches.to(self.device), per_patch)
            _sync(self.device)
            timings["detail_encode"] = time.perf_counter() - started
            for index, part in zip(missing, encoded, strict=True):
                parts[index] = part
                self.details.put(key, keys[index], part)
        return torch.stack(parts)
