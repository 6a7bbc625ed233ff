"""A synthetic multi-task instruction set built from generated slides (omnipath.synth).

Every slide is written by `write_synthetic_slide` with its ground truth (lesion rectangles,
kinds, grades, a label map). From each slide we derive conversations in the dataset format
of `omnipath.train.data` (thumbnail PNG, detail-patch PNGs, mask PNGs, JSON):

- grade      "What is the grade of the <kind> lesion at [box]?" → "Grade g." The synthetic
             writer gives the grades of one kind the same mean colour, so the thumbnail
             cannot show the grade: it is carried by nuclear size, crowding and chromatin,
             visible only in the detail patches (read at the detail magnification, 20×).
- detect     tissue-level detection: every lesion as "kind: [x0, y0, x1, y1]" (`rel_` frame).
- segment    "Segment the <kind> lesion at [box]." → "<mask>" with the lesion's map.
- refer      "In the region <mask>: what is there?" (the map goes through the mask encoder,
             the engine's own wording for a user-drawn region) → kind and grade.
- count/kind plain questions answered from the thumbnail.
- patch_grade (opt-in) "What is the grade of the lesion in this patch?" on a detail-sized
             patch centred on a lesion pixel: cheap examples of the texture the grade task
             needs.
- nuclei     nucleus-level detection on a high-resolution patch of a lesion: the boxes of the
             largest nuclei, found in the patch's pixels by stain thresholding (the writer
             does not export nucleus positions; the rule is in `omnipath.train.nuclei`).

Detail patches follow the engine exactly (grid cells of the square thumbnail, the same
read rectangles, read side and position texts from `omnipath.pgdfc`), so training sees what
PGDFC gives at inference. In training the cells are those a good probe would pick for the
question (the lesion's cells), padded with random tissue cells, in shuffled order; the test
split is left to the engine to read itself.

Slide-level records also carry "attend": the map of every lesion on the slide, the target
of the trainer's optional probe-attention loss (`omnipath.train.probe_loss`). It teaches
layer 0 where details matter; the paper instead relies on attention emerging from ~490k
samples, which a 135M model trained for minutes does not get.

Splits are by slide with a fixed seed (70 / 15 / 15 %): no slide of the test split appears
in train or validation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from omnipath.coords import L0Rect, ThumbFrame, l0_to_rel
from omnipath.train.data import format_rel_box, pad_mask_to_square
from omnipath.train.nuclei import nucleus_boxes

SPLITS = ("train", "val", "test")
# A cell is tissue when this fraction of it is (the engine's background_threshold default).
TISSUE_THRESHOLD = 0.2
TASKS = (
    "grade",
    "detect",
    "segment",
    "refer",
    "count",
    "kind",
    "nuclei",
    "patch_grade",
    "followup",
    "describe",
)
# Opt-in: patch_grade did not teach omnipath-mini v2's small towers the grade (its model
# card); followup and describe are the multi-turn and caption records of mini v3's stages.
OPT_IN_TASKS = ("patch_grade", "followup", "describe")
DEFAULT_TASKS = tuple(task for task in TASKS if task not in OPT_IN_TASKS)


@dataclass(frozen=True)
class SyntheticSetConfig:
    """What to generate. Sizes in level-0 pixels; the model-facing values (thumb side, grid,
    tokens per detail patch, S) must match the model that will be trained."""

    n_slides: int = 40
    slide_width: int = 4096
    slide_height: int = 3072
    mpp: float = 0.25
    max_lesions: int = 3
    seed: int = 0
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    thumb_side: int = 128
    grid: int = 8
    detail_magnification: float = 20.0
    # What the model's encoder consumes per detail patch (`model.detail_side`, the engine's
    # `encoder_side`): with the magnification it sets the field of view of a detail read.
    detail_side: int = 64
    detail_patches: int = 4  # S per training sample (the engine's S may be larger)
    box_decimals: int = 3  # as the model's OmniPathConfig.box_decimals
    probe_ranked: bool = False  # detail cells as a good probe ranks them (`details`)
    followups_per_slide: int = 1  # followup conversations (each turn a record)
    context_fraction: float = 0.25
    nucleus_patch_side: int = 64  # output pixels at the detail magnification
    max_nuclei: int = 6
    patch_grades: int = 3  # patch_grade records per lesion (detail-sized, centred on it)
    tasks: tuple[str, ...] = DEFAULT_TASKS
    # Give slide-level records an "attend" map (every lesion) for the probe-attention loss.
    attention_targets: bool = True
    extra: dict = field(default_factory=dict)


def split_of_slides(n_slides: int, seed: int, fractions=(0.7, 0.15, 0.15)) -> dict[str, list[int]]:
    """Slide indices per split: a fixed-seed permutation cut 70/15/15 (at least one slide in
    val and test when n_slides ≥ 3)."""
    order = np.random.default_rng(seed).permutation(n_slides).tolist()
    n_val = max(1 if n_slides >= 3 else 0, round(fractions[1] * n_slides))
    n_test = max(1 if n_slides >= 3 else 0, round(fractions[2] * n_slides))
    n_train = n_slides - n_val - n_test
    return {
        "train": sorted(order[:n_train]),
        "val": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }


def slide_seed(seed: int, index: int) -> int:
    return seed * 100_003 + index


# --- pixels -------------------------------------------------------------------------------


def cell_fractions(
    label_map: Image.Image, frame: ThumbFrame, grid: int, values: set[int]
) -> np.ndarray:
    """grid×grid fraction of each thumb-frame cell whose label is in `values` (padding = 0)."""
    wanted = np.isin(np.asarray(label_map), list(values)).astype(np.uint8) * 255
    square = (
        np.asarray(pad_mask_to_square(Image.fromarray(wanted), frame), dtype=np.float32) / 255.0
    )
    side = frame.side - frame.side % grid
    cells = square[:side, :side].reshape(grid, side // grid, grid, side // grid)
    return cells.mean(axis=(1, 3))


# --- questions ----------------------------------------------------------------------------

_GRADE_Q = (
    "What is the grade of the {kind} lesion at {box}?",
    "Grade the {kind} at {box}.",
    "How severe is the {kind} at {box}? Give its grade from 1 to 3.",
)
_DETECT_Q = ("Find every lesion and give its box.", "Detect the lesions on this slide.")
_SEGMENT_Q = ("Segment the {kind} lesion at {box}.", "Outline the {kind} at {box}.")
_COUNT_Q = ("How many lesions are on this slide?", "Count the lesions.")
_DESCRIBE_Q = ("Describe this slide.", "What do you see on this slide?")
_KIND_Q = ("What kind of lesion is at {box}?", "What is the lesion at {box}?")
_REFER_Q = ("What is there?", "Describe this region.")
_NUCLEI_Q = (
    "Detect the {n} largest nuclei in this patch.",
    "Give boxes for the {n} largest nuclei.",
)


def _with_article(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


@dataclass
class _SlideContext:
    index: int
    root: Path
    slide: object  # omnipath.slide.Slide
    truth: object  # SyntheticSlide
    frame: ThumbFrame
    label_map: Image.Image
    tissue_cells: np.ndarray  # grid×grid fractions
    rng: np.random.Generator
    config: SyntheticSetConfig
    stem: str
    seed: int = 0

    def reseed(self, task: str, lesion_index: int) -> None:
        """One random stream per (slide, task, lesion): a record does not change when other
        tasks are switched on or off."""
        self.rng = np.random.default_rng([self.seed, TASKS.index(task), lesion_index + 1])

    def rel_box(self, rect: L0Rect) -> str:
        return format_rel_box(
            l0_to_rel(rect, self.truth.width, self.truth.height), decimals=self.config.box_decimals
        )

    def save(self, image: Image.Image, folder: str, name: str) -> str:
        path = self.root / folder / f"{self.stem}_{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        return str(path.relative_to(self.root))

    def lesion_mask(self, lesion_index: int) -> str:
        value = self.truth.lesions[lesion_index].mask_value
        binary = (np.asarray(self.label_map) == value).astype(np.uint8) * 255
        return self.save(Image.fromarray(binary), "masks", f"lesion{lesion_index}")

    def attend_mask(self) -> str | None:
        """Every lesion of the slide as one map: where PGDFC's probe should look (the
        record's "attend"), or None when the set is built without attention targets."""
        if not self.config.attention_targets or not self.truth.lesions:
            return None
        values = [lesion.mask_value for lesion in self.truth.lesions]
        binary = np.isin(np.asarray(self.label_map), values).astype(np.uint8) * 255
        return self.save(Image.fromarray(binary), "masks", "lesions")

    @cached_property
    def read_rects(self) -> dict[tuple[int, int], L0Rect]:
        """The engine's read rectangle of every tissue cell (grid_row, grid_col)."""
        from omnipath import pgdfc

        config = self.config
        window = pgdfc.detail_window_l0(
            encoder_side=config.detail_side,
            slide_mpp=self.truth.mpp,
            detail_mpp=10.0 / config.detail_magnification,
        )
        rects = {}
        for flat in np.flatnonzero(self.tissue_cells.reshape(-1) >= TISSUE_THRESHOLD):
            row, col = divmod(int(flat), config.grid)
            cell = pgdfc.Cell(row, col, float("nan"), 0)
            rects[(row, col)] = pgdfc.cell_read_rect(
                self.frame, cell, config.grid, config.context_fraction, max_l0_side=window
            )
        return rects

    def lesion_fraction(self, rect: L0Rect, lesion_index: int) -> float:
        """Fraction of a level-0 rectangle covered by lesion `lesion_index` (label map)."""
        labels = np.asarray(self.label_map)
        down = self.truth.mask_downsample
        clipped = rect.clip(self.truth.width, self.truth.height)
        crop = labels[
            clipped.y // down : max(clipped.y // down + 1, clipped.y1 // down),
            clipped.x // down : max(clipped.x // down + 1, clipped.x1 // down),
        ]
        value = self.truth.lesions[lesion_index].mask_value
        return float((crop == value).mean()) if crop.size else 0.0

    @cached_property
    def any_lesion_coverage(self) -> dict[tuple[int, int], float]:
        """Per tissue cell: the fraction of its read on any lesion (what a good probe ranks by)."""
        lesions = range(len(self.truth.lesions))
        return {
            cell: sum(self.lesion_fraction(rect, i) for i in lesions)
            for cell, rect in self.read_rects.items()
        }

    def details(self, lesion_index: int | None) -> list[dict]:
        """Detail patches as the engine reads them, S = config.detail_patches.

        `config.probe_ranked` (mini v3): the cells a good probe ranks first, in rank order —
        PGDFC's probe cannot know which lesion the question means (layer 0), so the cells are
        ranked by how much of ANY lesion their read covers, with a little noise, the cells
        most on the asked lesion kept in; then tissue cells. Otherwise (v2): the cells whose
        read covers the asked lesion most (at most 2), then random tissue cells, shuffled."""
        config = self.config
        rects = self.read_rects
        cells = sorted(rects)
        chosen: list[tuple[int, int]] = []
        if lesion_index is not None:
            cover = [(self.lesion_fraction(rects[c], lesion_index), c) for c in cells]
            cover.sort(key=lambda item: -item[0])
            chosen = [c for fraction, c in cover[:2] if fraction > 0.05]
        if config.probe_ranked:
            anywhere = self.any_lesion_coverage
            noise = dict(zip(cells, self.rng.uniform(0.0, 0.1, size=len(cells)), strict=True))
            ranked = sorted(cells, key=lambda c: -(anywhere[c] + noise[c]))
            rest = [c for c in ranked if c not in chosen]
            chosen = (chosen + rest)[: config.detail_patches]
            chosen.sort(key=ranked.index)
        else:
            rest = [c for c in cells if c not in chosen]
            extra = self.rng.permutation(len(rest))[: max(0, config.detail_patches - len(chosen))]
            chosen += [rest[i] for i in extra]
            chosen = [chosen[i] for i in self.rng.permutation(len(chosen))]
        return self._detail_patches(chosen, rects)

    def _detail_patches(
        self, chosen: list[tuple[int, int]], rects: dict[tuple[int, int], L0Rect]
    ) -> list[dict]:
        """The chosen cells' reads at the detail magnification, numbered in order."""
        from omnipath import pgdfc

        config = self.config
        if not chosen:
            return []
        read_rects = [rects[c] for c in chosen]
        out_side = pgdfc.detail_read_side(
            read_rects[0].w,
            slide_mpp=self.truth.mpp,
            detail_mpp=10.0 / config.detail_magnification,
            encoder_side=config.detail_side,
        )
        out = []
        for k, ((row, col), rect) in enumerate(zip(chosen, read_rects, strict=True), start=1):
            region = pgdfc.cell_region(rect, self.truth.width, self.truth.height)
            patch = self.slide.read_l0_region(rect, (out_side, out_side))
            out.append(
                {
                    "image": self.save(patch, "details", f"{row}_{col}"),
                    "text": pgdfc.position_text(k, region, self.truth.width, self.truth.height),
                }
            )
        return out


def _record(
    ctx: _SlideContext,
    task: str,
    name: str,
    human: str,
    gpt: str,
    *,
    details: list[dict] | None = None,
    human_masks=(),
    gpt_masks=(),
    image: str | None = None,
    attend: str | None = None,
) -> dict:
    human_turn = {"from": "human", "value": f"<image>\n{human}"}
    if human_masks:
        human_turn["masks"] = list(human_masks)
    gpt_turn = {"from": "gpt", "value": gpt}
    if gpt_masks:
        gpt_turn["masks"] = list(gpt_masks)
    record = {
        "id": f"{ctx.stem}-{name}",
        "image": image or f"thumbs/{ctx.stem}.png",
        "conversations": [human_turn, gpt_turn],
        "task": task,
    }
    if details:
        record["details"] = details
    if attend:
        record["attend"] = attend
    return record


def _slide_records(ctx: _SlideContext) -> list[dict]:
    config = ctx.config
    lesions = ctx.truth.lesions
    tasks = set(config.tasks)
    attend = ctx.attend_mask()

    def pick(options: tuple[str, ...]) -> str:
        return options[int(ctx.rng.integers(len(options)))]

    def slide_record(task: str, lesion: int | None, question: str, answer: str, **masks) -> dict:
        """A question about the whole slide: the thumbnail, detail patches as the engine
        would read them for `lesion` (None: random tissue), the attend map."""
        name = task if lesion is None else f"{task}{lesion}"
        details = ctx.details(lesion)
        return _record(ctx, task, name, question, answer, details=details, attend=attend, **masks)

    records: list[dict] = []
    for i, lesion in enumerate(lesions):
        box = ctx.rel_box(lesion.l0_rect)
        if "grade" in tasks:
            ctx.reseed("grade", i)
            question = pick(_GRADE_Q).format(kind=lesion.kind, box=box)
            records.append(slide_record("grade", i, question, f"Grade {lesion.grade}."))
        if "segment" in tasks:
            ctx.reseed("segment", i)
            question = pick(_SEGMENT_Q).format(kind=lesion.kind, box=box)
            records.append(
                slide_record(
                    "segment", i, question, "Here it is: <mask>", gpt_masks=[ctx.lesion_mask(i)]
                )
            )
        if "refer" in tasks:
            ctx.reseed("refer", i)
            question = f"In the region <mask>: {pick(_REFER_Q)}"
            answer = f"{_with_article(lesion.kind).capitalize()} lesion, grade {lesion.grade}."
            records.append(
                slide_record("refer", i, question, answer, human_masks=[ctx.lesion_mask(i)])
            )
        if "kind" in tasks:
            ctx.reseed("kind", i)
            question = pick(_KIND_Q).format(box=box)
            records.append(slide_record("kind", i, question, f"{lesion.kind.capitalize()}."))
        if "nuclei" in tasks:
            ctx.reseed("nuclei", i)
            records.append(_nuclei_record(ctx, i))
        if "patch_grade" in tasks:
            ctx.reseed("patch_grade", i)
            records.extend(_patch_grade_records(ctx, i))
    if "detect" in tasks:
        ctx.reseed("detect", -1)
        if lesions:
            listing = "; ".join(f"{les.kind}: {ctx.rel_box(les.l0_rect)}" for les in lesions)
            answer = f"{_plural(len(lesions), 'lesion')}. {listing}."
        else:
            answer = "There is no lesion on this slide."
        records.append(slide_record("detect", None, pick(_DETECT_Q), answer))
    if "count" in tasks:
        ctx.reseed("count", -1)
        records.append(slide_record("count", None, pick(_COUNT_Q), _count_answer(len(lesions))))
    if "describe" in tasks and lesions:
        ctx.reseed("describe", -1)
        parts = [
            f"{_with_article(f'grade-{les.grade} {les.kind}')} at {ctx.rel_box(les.l0_rect)}"
            for les in lesions
        ]
        answer = f"{_plural(len(lesions), 'lesion')}: " + "; ".join(parts) + "."
        records.append(slide_record("describe", None, pick(_DESCRIBE_Q), answer))
    if "followup" in tasks and lesions:
        for n in range(config.followups_per_slide):
            ctx.reseed("followup", n)
            records.extend(_followup_records(ctx, attend, n))
    return records


def _count_answer(n_lesions: int) -> str:
    return f"There {'is' if n_lesions == 1 else 'are'} {_plural(n_lesions, 'lesion')}."


def _followup_records(ctx: _SlideContext, attend: str | None, n: int) -> list[dict]:
    """One conversation of `FOLLOWUP_TURNS` (count, segment the largest, its grade, box the
    second): a record per turn after the first (the count task covers that one), each with
    the earlier turns as the engine renders history (`clean_text`: an old answer's <mask> is
    text), labels on its last answer only, and the detail patches of ITS question."""
    from omnipath.engine.prompt import clean_text
    from omnipath.train.followups import FOLLOWUP_TURNS, largest_lesion, second_from_left

    lesions = ctx.truth.lesions
    labels = np.asarray(ctx.label_map)
    largest = largest_lesion([int((labels == les.mask_value).sum()) for les in lesions])
    second = second_from_left([les.l0_rect.x for les in lesions])
    chosen = lesions[second]
    answers = {
        "count": (_count_answer(len(lesions)), None, ()),
        "segment": ("Here it is: <mask>", largest, (ctx.lesion_mask(largest),)),
        "grade": (f"Grade {lesions[largest].grade}.", largest, ()),
        "box": (f"{chosen.kind}: {ctx.rel_box(chosen.l0_rect)}.", second, ()),
    }
    history: list[dict] = []  # earlier turns, dataset format, plain text
    records = []
    for turn, (name, question, _form) in enumerate(FOLLOWUP_TURNS):
        answer, lesion, masks = answers[name]
        if turn > 0:
            record = _record(
                ctx,
                "followup",
                f"followup{n}_{turn}",
                question,
                answer,
                details=ctx.details(lesion),
                gpt_masks=masks,
                attend=attend,
            )
            asked, answered = record["conversations"]
            opening = {**history[0], "value": f"<image>\n{history[0]['value']}"}
            record["conversations"] = [
                opening,
                *history[1:],
                {**asked, "value": question},
                answered,
            ]
            record["labels"] = "last"
            records.append(record)
        history += [
            {"from": "human", "value": question},
            {"from": "gpt", "value": clean_text(answer)},
        ]
    return records


_PATCH_GRADE_Q = (
    "What is the grade of the lesion in this patch?",
    "Grade this patch from 1 to 3.",
)


def _patch_grade_records(ctx: _SlideContext, lesion_index: int) -> list[dict]:
    """`patch_grades` patches of the engine's detail size and magnification, each centred on
    a random pixel of the lesion, the patch as the image: "Grade g." """
    from omnipath import pgdfc

    config = ctx.config
    lesion = ctx.truth.lesions[lesion_index]
    down = ctx.truth.mask_downsample
    ys, xs = np.nonzero(np.asarray(ctx.label_map) == lesion.mask_value)
    if ys.size == 0:
        return []
    window = round(
        pgdfc.detail_window_l0(
            encoder_side=config.detail_side,
            slide_mpp=ctx.truth.mpp,
            detail_mpp=10.0 / config.detail_magnification,
        )
    )
    side = pgdfc.detail_read_side(
        window,
        slide_mpp=ctx.truth.mpp,
        detail_mpp=10.0 / config.detail_magnification,
        encoder_side=config.detail_side,
    )
    out = []
    for k, pick in enumerate(ctx.rng.choice(ys.size, size=config.patch_grades)):
        cx, cy = int(xs[pick]) * down + down // 2, int(ys[pick]) * down + down // 2
        rect = L0Rect(cx - window // 2, cy - window // 2, window, window)
        patch = ctx.slide.read_l0_region(rect, (side, side))
        image = ctx.save(patch, "patches", f"grade{lesion_index}_{k}")
        question = _PATCH_GRADE_Q[int(ctx.rng.integers(len(_PATCH_GRADE_Q)))]
        name = f"patch_grade{lesion_index}_{k}"
        out.append(
            _record(ctx, "patch_grade", name, question, f"Grade {lesion.grade}.", image=image)
        )
    return out


def _nuclei_record(ctx: _SlideContext, lesion_index: int) -> dict:
    """A high-resolution patch at the lesion's centre, read at the detail magnification."""
    config = ctx.config
    lesion = ctx.truth.lesions[lesion_index]
    l0_side = max(
        1, round(config.nucleus_patch_side * (10.0 / config.detail_magnification) / ctx.truth.mpp)
    )
    cx = lesion.l0_rect.x + lesion.l0_rect.w // 2
    cy = lesion.l0_rect.y + lesion.l0_rect.h // 2
    rect = L0Rect(cx - l0_side // 2, cy - l0_side // 2, l0_side, l0_side)
    side = config.nucleus_patch_side
    patch = ctx.slide.read_l0_region(rect, (side, side))
    image = ctx.save(patch, "patches", f"nuclei{lesion_index}")
    boxes = nucleus_boxes(patch, max_nuclei=config.max_nuclei)
    question = ctx.rng.choice(_NUCLEI_Q).format(n=config.max_nuclei)
    if boxes:
        from omnipath.coords import RelBox

        answer = (
            "; ".join(format_rel_box(RelBox(*b), "nucleus", ctx.config.box_decimals) for b in boxes)
            + "."
        )
    else:
        answer = "There is no nucleus in this patch."
    return _record(ctx, "nuclei", f"nuclei{lesion_index}", question, answer, image=image)


def build_synthetic_set(
    out_dir: str | Path,
    config: SyntheticSetConfig = SyntheticSetConfig(),
    *,
    progress: bool = False,
) -> dict[str, Path]:
    """Write slides, images, masks and train/val/test JSON under `out_dir`.

    Returns {split: path of its JSON}. `manifest.json` records the config, the slide indices
    of each split and the number of records per task. Deterministic for a config.
    """
    from omnipath.slide import open_slide
    from omnipath.synth import write_synthetic_slide

    root = Path(out_dir)
    (root / "slides").mkdir(parents=True, exist_ok=True)
    splits = split_of_slides(config.n_slides, config.seed, config.split_fractions)
    split_of = {i: name for name, indices in splits.items() for i in indices}
    records: dict[str, list[dict]] = {name: [] for name in SPLITS}
    slides_of: dict[str, list[dict]] = {name: [] for name in SPLITS}
    iterator = range(config.n_slides)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="synthetic slides")
    for index in iterator:
        seed = slide_seed(config.seed, index)
        stem = f"slide{index:03d}"
        lesion_rng = np.random.default_rng(seed)
        n_lesions = int(lesion_rng.integers(1, config.max_lesions + 1))
        truth = write_synthetic_slide(
            root / "slides" / f"{stem}.tiff",
            config.slide_width,
            config.slide_height,
            seed=seed,
            n_lesions=n_lesions,
            mpp=config.mpp,
        )
        label_map = Image.open(truth.masks_path).convert("L")
        frame = ThumbFrame(truth.width, truth.height, config.thumb_side)
        with open_slide(truth.path) as slide:
            thumb = slide.thumbnail(config.thumb_side)
            (root / "thumbs").mkdir(exist_ok=True)
            thumb.save(root / "thumbs" / f"{stem}.png")
            ctx = _SlideContext(
                index=index,
                root=root,
                slide=slide,
                truth=truth,
                frame=frame,
                label_map=label_map,
                tissue_cells=cell_fractions(label_map, frame, config.grid, set(range(1, 256))),
                rng=np.random.default_rng(seed + 1),
                seed=seed,
                config=config,
                stem=stem,
            )
            split = split_of[index]
            records[split].extend(_slide_records(ctx))
        slides_of[split].append(
            {
                "slide": str(truth.path.relative_to(root)),
                "labels": str(truth.labels_path.relative_to(root)),
            }
        )
    paths = {}
    for name in SPLITS:
        paths[name] = root / f"{name}.json"
        paths[name].write_text(json.dumps(records[name], indent=1))
    counts = {
        name: {task: sum(r["task"] == task for r in records[name]) for task in TASKS}
        for name in SPLITS
    }
    manifest = {"config": asdict(config), "splits": splits, "slides": slides_of, "counts": counts}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return paths


def records_per_task(path: str | Path) -> dict[str, int]:
    """How many records of each task a split file holds."""
    data = json.loads(Path(path).read_text())
    return {
        task: sum(r.get("task") == task for r in data)
        for task in TASKS
        if any(r.get("task") == task for r in data)
    }
