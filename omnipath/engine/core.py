"""The engine: one loaded model answering questions about slides, streaming.

One question (DESIGN.md "One question, end to end"):

    thumbnail (cached per slide) → vision → e_v
    chat template over history + question → prefix ids          (omnipath.engine.prompt)
    prefill [e_v, e_t] once, KV cache on; a pre-hook on layer 0 computes Ψ's row (the probe)
    tissue filter → top-S cells → level-0 reads → detail tokens ê_v + position texts ê_t
    append [ê_v, ê_t] + the assistant prompt to the SAME cache (no prefill is repeated)
    decode token by token (stop event and deadline checked between tokens)
    `<mask>` hidden states → mask decoder → masks on level 0; boxes parsed from the text

Model calls run under `torch.inference_mode()` in helper methods; the generator itself only
yields between them, so the caller's code never runs inside inference mode.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from omnipath import pgdfc
from omnipath.boxes import BOX_FORMAT_SLIDE, box_frame, boxes_from_text
from omnipath.coords import L0Rect, ThumbFrame
from omnipath.engine.details import DetailCache
from omnipath.engine.masks import place_mask, region_map, region_sentence
from omnipath.engine.options import MAX_NEW_TOKENS_LIMIT, AnswerOptions
from omnipath.engine.prompt import PromptIds, build_prompt, check_history, detail_block_ids
from omnipath.engine.results import Answer, Region
from omnipath.engine.sampling import make_generator, next_token
from omnipath.engine.thumbs import ThumbFeatures, ThumbnailCache
from omnipath.errors import CapabilityError, DeviceOutOfMemoryError, OptionsError

log = logging.getLogger(__name__)

STAGES = ("thumbnail", "vision", "probe", "detail_read", "detail_encode", "prefill", "decode")
# Answer.tokens: prompt (all input tokens), thumbnail (N image tokens), detail (detail blocks:
# image tokens + position texts), detail_patches (kept), detail_patches_dropped (budget),
# generated, masks (generated <mask> tokens), history_messages, thumbnail_cached (0/1).
TOKEN_COUNTS = (
    "prompt",
    "thumbnail",
    "detail",
    "detail_patches",
    "detail_patches_dropped",
    "generated",
    "masks",
    "history_messages",
    "thumbnail_cached",
    "detail_patches_cached",
)
MAX_QUESTION_CHARS = 8000


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work so a stage's time is its own (CPU: nothing to wait for)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class _Look:
    """A slide's square thumbnail and its tissue grid (grid×grid tissue fraction), made when
    a question is asked so S is checked then; `features` when the vision features are
    cached already, else `seconds` it took to render."""

    frame: ThumbFrame
    image: Any  # PIL image, side×side RGB
    tissue: np.ndarray
    seconds: float = 0.0
    features: ThumbFeatures | None = None


@dataclass
class _Pgdfc:
    """What PGDFC contributed to one question (planned from Ψ, then read and encoded)."""

    regions: list[Region] = field(default_factory=list)
    block_ids: list[list[int]] = field(default_factory=list)
    detail_tokens: torch.Tensor | None = None  # S×P×D
    dropped: int = 0
    read_rects: list[L0Rect] = field(default_factory=list)
    out_side: int = 0
    tokens_per_patch: int = 1
    cached: dict[int, torch.Tensor] = field(default_factory=dict)  # patch index → P×D
    reads: pgdfc.DetailReads | None = None  # the patches not cached, being read
    read_started: float = 0.0


class Engine:
    """One loaded model (OmniPath or the LLaVA adapter) answering questions about slides.

    Thread-safe: questions are answered one at a time (a lock held while a stream runs).
    """

    def __init__(
        self,
        model: Any,
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
        overlap_detail_reads: bool = True,
    ) -> None:
        """stop_token_ids: the tokens that end an answer (default: EOS and the chat template's
        end-of-turn marker); an empty set makes every answer run to max_new_tokens, which is
        what benchmarks comparing latencies need. detail_cache_size: encoded detail patches
        kept for follow-up questions (0: none). overlap_detail_reads: start the detail reads
        from the probe's hook, as soon as layer 0 gave Ψ, so they run while layers 1..L of the
        prefix prefill still compute (False: read after the prefill; same results)."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.revision = revision
        self.demo = demo
        self.quantization = quantization
        self.max_new_tokens_limit = max_new_tokens_limit
        self.thumbs = ThumbnailCache(thumb_cache_size)
        self.details = DetailCache(detail_cache_size)
        self.overlap_detail_reads = bool(overlap_detail_reads)
        self._lock = threading.Lock()
        self._stop_ids = self._find_stop_ids() if stop_token_ids is None else set(stop_token_ids)

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

    def _dtype_of(self, submodule: str) -> torch.dtype:
        """The parameter dtype of one of the model's parts (16-bit next to a 4-bit LLM)."""
        module = getattr(self.model, submodule, None)
        for parameter in module.parameters() if module is not None else ():
            return parameter.dtype
        return next(self.model.parameters()).dtype

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

    def _find_stop_ids(self) -> set[int]:
        """End of answer: the EOS ids, plus the chat template's end-of-turn marker when it is a
        special token (ChatML's <|im_end|>, Llama 3's <|eot_id|>)."""
        stop: set[int] = set()
        for source in (
            getattr(self.tokenizer, "eos_token_id", None),
            getattr(getattr(self.model, "generation_config", None), "eos_token_id", None),
            getattr(self.model.language_model.config, "eos_token_id", None),
        ):
            if isinstance(source, int):
                stop.add(source)
            elif isinstance(source, list | tuple):
                stop.update(int(s) for s in source)
        if getattr(self.tokenizer, "chat_template", None):
            try:
                marker = "\ue000end\ue000"
                text = self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}],
                    tokenize=False,
                )
                after = text.split(marker, 1)[1]
                ids = self.tokenizer(after, add_special_tokens=False)["input_ids"]
                special = set(getattr(self.tokenizer, "all_special_ids", []))
                if ids and ids[0] in special:
                    stop.add(int(ids[0]))
            except Exception:  # a template that cannot render this probe: EOS alone
                log.debug("no end-of-turn marker found in the chat template", exc_info=True)
        return stop

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
    ) -> Iterator[str | Answer]:
        """Stream the answer to `question` about `slide`: text deltas (str), then exactly one
        Answer as the last item.

        history: earlier turns of THIS slide's conversation, [{"role", "content"}] (text only;
        a new slide is a new conversation, the caller's job). l0_region: a level-0 rectangle
        the user points at (a `<mask>` input, or a sentence for models without masks).
        Bad options raise OptionsError here, at call time, and so does S above the slide's
        tissue cells (the thumbnail and its tissue grid are made here; cached per slide), so
        a caller can refuse the question before logging it. TokenBudgetError and
        DeviceOutOfMemoryError are raised while iterating, before any text.
        """
        options = options if options is not None else AnswerOptions()
        if not isinstance(options, AnswerOptions):
            raise OptionsError("options must be AnswerOptions.")
        options.validate(max_new_tokens_limit=self.max_new_tokens_limit)
        if not isinstance(question, str) or not question.strip():
            raise OptionsError("The question is empty; type a question about the slide.")
        if len(question) > MAX_QUESTION_CHARS:
            raise OptionsError(
                f"The question is {len(question)} characters long; keep it under "
                f"{MAX_QUESTION_CHARS}."
            )
        checked_history = check_history(history)
        if l0_region is not None and not isinstance(l0_region, L0Rect):
            raise OptionsError("The region must be a level-0 rectangle (x, y, w, h).")
        look = self._look(slide)
        if options.pgdfc_mode != "off":
            pgdfc.check_s_against_tissue(options.s, self._tissue_cells(look))
        return self._stream(
            slide, look, checked_history, question.strip(), options, stop, l0_region
        )

    def _stream(
        self,
        slide: Any,
        look: _Look,
        history: list[dict],
        question: str,
        options: AnswerOptions,
        stop: threading.Event | None,
        l0_region: L0Rect | None,
    ) -> Iterator[str | Answer]:
        out_of_memory: str | None = None
        with self._lock:
            try:
                yield from self._answer(slide, look, history, question, options, stop, l0_region)
            except torch.OutOfMemoryError as exc:
                out_of_memory = str(exc)
            # leave the except block first: the traceback holds the KV cache and activations
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

    def _answer(
        self,
        slide: Any,
        look: _Look,
        history: list[dict],
        question: str,
        options: AnswerOptions,
        stop: threading.Event | None,
        l0_region: L0Rect | None,
    ) -> Iterator[str | Answer]:
        start = time.perf_counter()
        deadline = start + options.timeout_s
        timings = dict.fromkeys(STAGES, 0.0)
        tokens = dict.fromkeys(TOKEN_COUNTS, 0)
        answer = Answer(text="", model_id=self.model_id, revision=self.revision)
        answer.timings, answer.tokens = timings, tokens

        def interrupted() -> bool:
            if stop is not None and stop.is_set():
                answer.stopped = True
            elif time.perf_counter() > deadline:
                answer.timed_out = True
            return answer.stopped or answer.timed_out

        thumb = self._thumbnail(slide, look, timings, tokens)
        grid = self.model.grid
        tissue = self._tissue_cells(look)

        region_embeds, region_text = None, None
        if l0_region is not None:
            region_embeds, region_text = self._region_input(l0_region, thumb.frame)
        prompt = build_prompt(
            self.tokenizer,
            history,
            question,
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
        tokens.update(thumbnail=self.model.num_image_tokens, history_messages=len(history))
        if interrupted():
            yield self._finish(answer, start, thumb, [], [], options)
            return

        planned: list[_Pgdfc] = []

        def plan(row: torch.Tensor) -> None:  # Ψ known: choose cells, start their reads
            started = time.perf_counter()
            planned.append(
                self._plan_details(slide, thumb, tissue, grid, row[0], prompt, base_tokens, options)
            )
            timings["detail_plan"] = time.perf_counter() - started

        on_row = plan if options.pgdfc_mode != "off" and self.overlap_detail_reads else None
        cache, last_hidden, row = self._prefill_prefix(
            prompt, thumb, region_embeds, options, timings, on_row
        )
        if planned:  # planned inside the prefill: not the prefill's own cost
            timings["prefill"] -= timings["detail_plan"]
        details = _Pgdfc()
        if options.pgdfc_mode != "off":
            if not planned:  # sequential path (or a probe without the hook): plan now
                plan(row.unsqueeze(0))
            details = self._detail_features(slide, planned[0], timings)
        tokens.update(
            detail_patches=len(details.regions),
            detail_patches_dropped=details.dropped,
            detail=sum(len(b) for b in details.block_ids),
            detail_patches_cached=len(details.cached),
        )
        answer.regions = details.regions
        logits, hidden = self._prefill_rest(cache, last_hidden, details, prompt.suffix_ids, timings)
        tokens["prompt"] = base_tokens + tokens["detail"]

        generated: list[int] = []
        mask_hidden: list[torch.Tensor] = []
        emitted = ""
        generator = make_generator(options.seed) if options.temperature > 0 else None
        decode_start = time.perf_counter()
        for step in range(options.max_new_tokens):
            if interrupted():
                break
            token = next_token(
                logits, temperature=options.temperature, top_p=options.top_p, generator=generator
            )
            if token in self._stop_ids:
                break
            generated.append(token)
            if token == self.model.config.mask_token_id:
                mask_hidden.append(hidden)  # the state that predicted <mask> (modeling.py)
            text = self._decode_text(generated)
            if (
                not text.endswith("\ufffd")
                and text.startswith(emitted)
                and len(text) > len(emitted)
            ):
                yield text[len(emitted) :]
                emitted = text
            if step + 1 < options.max_new_tokens:
                logits, hidden = self._step(cache, token)
        _sync(self.device)
        timings["decode"] = time.perf_counter() - decode_start
        tokens["generated"] = len(generated)
        answer.text = self._decode_text(generated)
        if answer.text.startswith(emitted) and len(answer.text) > len(emitted):
            yield answer.text[len(emitted) :]
        del cache
        yield self._finish(answer, start, thumb, generated, mask_hidden, options)

    def _look(self, slide: Any) -> _Look:
        """The slide's square thumbnail and tissue grid (no model call): the cached
        ThumbFeatures when the slide was seen, else rendered now."""
        side = int(self.model.thumb_side)
        cached = self.thumbs.get(slide, side)
        if cached is not None:
            return _Look(cached.frame, cached.image, cached.tissue, features=cached)
        from omnipath.slide.tissue import tissue_fraction

        started = time.perf_counter()
        frame = ThumbFrame(int(slide.l0_width), int(slide.l0_height), side)
        thumbnail = slide.thumbnail(side)
        image = frame.render(thumbnail)
        grid = self.model.grid
        tissue = np.asarray(tissue_fraction(image, (grid, grid)), dtype=np.float32)
        # Tissue is measured on white padding (glass); the model gets its own padding colour
        # (LLaVA's mean colour) when it has one.
        fill = getattr(self.model, "pad_fill", None)
        if fill is not None:
            image = frame.render(thumbnail, fill=tuple(fill))
        return _Look(frame, image, tissue, seconds=time.perf_counter() - started)

    def _tissue_cells(self, look: _Look) -> np.ndarray:
        return pgdfc.tissue_cells(look.tissue, self._setting("background_threshold", 0.2))

    def _thumbnail(self, slide: Any, look: _Look, timings: dict, tokens: dict) -> ThumbFeatures:
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
        self.thumbs.put(slide, int(self.model.thumb_side), features)
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
            region = region_map(clipped, frame).to(self.device, self._dtype_of("mask_encoder"))
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

    def _decoder(self) -> Any:
        return self.model.language_model.get_decoder()

    def _head(self) -> Any:
        return self.model.language_model.get_output_embeddings()

    @torch.inference_mode()
    def _prefill_prefix(
        self,
        prompt: PromptIds,
        thumb: ThumbFeatures,
        region_embeds: torch.Tensor | None,
        options: AnswerOptions,
        timings: dict,
        on_row: Any = None,
    ) -> tuple[Any, torch.Tensor, torch.Tensor | None]:
        """Prefill [e_v, e_t] into a fresh KV cache; Ψ's row captured on the way (not for
        mode off; `on_row(row 1×L)` is called inside the prefill as soon as Ψ is known).
        Returns (cache, last hidden state D, Ψ's row L or None)."""
        started = time.perf_counter()
        embeds = self._embed(prompt.prefix_ids, thumb.tokens, region_embeds)
        row = None
        if options.pgdfc_mode == "off":
            out = self._decoder()(inputs_embeds=embeds, use_cache=True)
        else:
            layer = int(self._setting("probe_layer", 0))
            with pgdfc.AttentionProbe(self.model.language_model, layer, on_row) as probe:
                out = self._decoder()(inputs_embeds=embeds, use_cache=True)
            row = probe.row[0]
            timings["probe"] = probe.seconds
        _sync(self.device)
        timings["prefill"] += time.perf_counter() - started - timings["probe"]
        return out.cache, out.last_hidden_state[0, -1], row

    def _plan_details(
        self,
        slide: Any,
        thumb: ThumbFeatures,
        tissue: np.ndarray,
        grid: int,
        row: torch.Tensor,
        prompt: PromptIds,
        base_tokens: int,
        options: AnswerOptions,
    ) -> _Pgdfc:
        """Ψ's row L → cells → level-0 rectangles and detail blocks within the token budget;
        the reads of the patches not in the detail cache are started (background threads)."""
        psi = pgdfc.psi_grid(row, prompt.image_positions, grid)
        cells = pgdfc.select_cells(
            mode=options.pgdfc_mode, s=options.s, tissue=tissue, psi=psi, seed=options.seed
        )
        frame = thumb.frame
        context = float(self._setting("context_fraction", pgdfc.DETAIL_CONTEXT))
        slide_mpp = _slide_mpp(slide)
        detail_mpp = 10.0 / float(self._setting("detail_magnification", 20.0))
        # What the encoder consumes per detail patch (OmniPath: max(detail_scale_factors) ×
        # the base tile; the LLaVA adapter: its thumbnail side).
        encoder_side = int(getattr(self.model, "detail_side", self.model.thumb_side))
        window = pgdfc.detail_window_l0(
            encoder_side=encoder_side, slide_mpp=slide_mpp, detail_mpp=detail_mpp
        )
        read_rects, regions = [], []
        for cell in cells:
            read_rect = pgdfc.cell_read_rect(frame, cell, grid, context, max_l0_side=window)
            l0_rect = pgdfc.cell_region(read_rect, frame.l0_width, frame.l0_height)
            if l0_rect is not None:  # always, for a tissue cell; never read pure padding
                read_rects.append(read_rect)
                regions.append(Region(rank=cell.rank, score=cell.score, l0_rect=l0_rect))
        texts = [
            pgdfc.position_text(i, r.l0_rect, frame.l0_width, frame.l0_height)
            for i, r in enumerate(regions, start=1)
        ]
        per_patch = int(self._setting("tokens_per_patch", 1))
        blocks = detail_block_ids(
            self.tokenizer,
            texts,
            image_token_id=self.model.config.image_token_id,
            tokens_per_patch=per_patch,
        )
        keep = pgdfc.fit_detail_budget(
            base_tokens=base_tokens,
            patch_tokens=[len(b) for b in blocks],
            max_new_tokens=options.max_new_tokens,
            context_length=self.context_length,
        )
        plan = _Pgdfc(
            regions=regions[:keep],
            block_ids=blocks[:keep],
            dropped=len(texts) - keep,
            read_rects=read_rects[:keep],
            tokens_per_patch=per_patch,
        )
        if not plan.regions:
            return plan
        plan.out_side = pgdfc.detail_read_side(
            plan.read_rects[0].w,
            slide_mpp=slide_mpp,
            detail_mpp=detail_mpp,
            encoder_side=encoder_side,
        )
        to_read = []
        for index, rect in enumerate(plan.read_rects):
            hit = self.details.get(self.details.key(slide, rect, plan.out_side, per_patch))
            if hit is not None:
                plan.cached[index] = hit
            else:
                to_read.append(rect)
        plan.read_started = time.perf_counter()
        if to_read:
            plan.reads = pgdfc.DetailReads(slide, to_read, plan.out_side)
        return plan

    def _detail_features(self, slide: Any, plan: _Pgdfc, timings: dict) -> _Pgdfc:
        """Wait for the planned reads, encode the patches not cached (one batch), fill the
        detail cache. `detail_read` is the time spent waiting for reads after the prefill (the
        part the overlap did not hide); on the sequential path, the whole read."""
        if not plan.regions:
            return plan
        missing = [i for i in range(len(plan.read_rects)) if i not in plan.cached]
        fresh: dict[int, torch.Tensor] = {}
        if missing and plan.reads is not None:
            started = time.perf_counter()
            patches = plan.reads.result()
            timings["detail_read"] = time.perf_counter() - started
            started = time.perf_counter()
            with torch.inference_mode():
                encoded = self.model.encode_detail_patches(
                    patches.to(self.device), plan.tokens_per_patch
                )
            _sync(self.device)
            timings["detail_encode"] = time.perf_counter() - started
            for index, tokens in zip(missing, encoded, strict=True):
                fresh[index] = tokens
                key = self.details.key(
                    slide, plan.read_rects[index], plan.out_side, plan.tokens_per_patch
                )
                self.details.put(slide, key, tokens)
        parts = [plan.cached.get(i, fresh.get(i)) for i in range(len(plan.read_rects))]
        plan.detail_tokens = torch.stack(parts)
        plan.reads = None
        return plan

    @torch.inference_mode()
    def _prefill_rest(
        self,
        cache: Any,
        last_hidden: torch.Tensor,
        details: _Pgdfc,
        suffix_ids: list[int],
        timings: dict,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the detail blocks [ê_t, ê_v] and the assistant prompt to the cache.
        Returns (logits V, last hidden D) of the last position."""
        started = time.perf_counter()
        ids = [t for block in details.block_ids for t in block] + list(suffix_ids)
        if not ids:  # a template without an assistant prompt: continue from the question
            hidden = last_hidden
        else:
            embeds = self._embed(ids, details.detail_tokens, None)
            out = self._decoder()(inputs_embeds=embeds, cache=cache, use_cache=True)
            hidden = out.last_hidden_state[0, -1]
        logits = self._head()(hidden)
        _sync(self.device)
        timings["prefill"] += time.perf_counter() - started
        return logits, hidden

    @torch.inference_mode()
    def _step(self, cache: Any, token: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed one generated token. Returns (logits V, last hidden D) of its position."""
        embeds = self.model.embed_tokens(torch.tensor([[token]], device=self.device))
        out = self._decoder()(inputs_embeds=embeds, cache=cache, use_cache=True)
        hidden = out.last_hidden_state[0, -1]
        return self._head()(hidden), hidden

    def _decode_text(self, ids: list[int]) -> str:
        """Generated ids → text: special tokens dropped, except `<mask>` kept as "<mask>"
        so the reader sees where each mask belongs."""
        mask_id = self.model.config.mask_token_id
        pieces: list[list[int]] = [[]]
        for token in ids:
            if token == mask_id:
                pieces.append([])
            else:
                pieces[-1].append(token)
        texts = [self.tokenizer.decode(p, skip_special_tokens=True) for p in pieces]
        return "<mask>".join(texts)

    def _finish(
        self,
        answer: Answer,
        start: float,
        thumb: ThumbFeatures,
        generated: list[int],
        mask_hidden: list[torch.Tensor],
        options: AnswerOptions,
    ) -> Answer:
        """Boxes from the text, masks from the `<mask>` states, total time."""
        frame = thumb.frame
        box_format = str(getattr(self.model.config, "box_format", None) or BOX_FORMAT_SLIDE)
        answer.boxes = boxes_from_text(
            answer.text,
            l0_width=frame.l0_width,
            l0_height=frame.l0_height,
            frame=box_frame(box_format),
            thumb_frame=frame,
        )
        if mask_hidden:
            if not self.supports_masks:
                answer.error = str(
                    CapabilityError("This model cannot draw masks; only its text is shown.")
                )
            else:
                started = time.perf_counter()
                with torch.inference_mode():
                    hidden = torch.stack(mask_hidden).to(self._dtype_of("mask_decoder"))
                    feature_map = thumb.feature_map.unsqueeze(0).expand(
                        len(mask_hidden), -1, -1, -1
                    )
                    logits = self.model.decode_masks(hidden, feature_map)
                answer.masks = [place_mask(m, frame) for m in logits]
                answer.timings["masks"] = time.perf_counter() - started
        answer.tokens["masks"] = len(mask_hidden)
        answer.timings["total"] = time.perf_counter() - start
        return answer


def _slide_mpp(slide: Any) -> float | None:
    """µm per level-0 pixel, from the slide's metadata or its objective power (10 / ×)."""
    info = getattr(slide, "info", None)
    mpp = getattr(info, "mpp_x", None)
    if mpp:
        return float(mpp)
    power = getattr(info, "objective_power", None)
    return 10.0 / float(power) if power else None
