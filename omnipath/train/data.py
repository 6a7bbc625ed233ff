"""Conversation datasets in the style of LLaVA's JSON, for OmniPath training.

A dataset is one JSON file (a list of records) or a JSONL file (one record per line).
Paths inside a record are relative to the dataset file's folder. One record:

    {
      "id": "slide3-grade-0",
      "image": "images/slide3_thumb.png",          # an image file, OR
      "slide": "slides/slide3.tiff",               # a slide, whole or one level-0 region
      "l0_region": [x, y, w, h],                   #   (optional; whole slide when absent)
      "details": [                                  # optional high-resolution detail patches
        {"image": "details/slide3_0.png", "text": "Detail 1 at x 0.10-0.20, y 0.30-0.40:"}
      ],
      "conversations": [
        {"from": "human", "value": "<image>\\nWhat grade is the lesion?"},
        {"from": "gpt", "value": "Grade 2. lesion: [0.120, 0.300, 0.250, 0.410] <mask>",
         "masks": ["masks/slide3_l0.png"]}
      ],
      "task": "grade",                              # free-form, used for reporting only
      "attend": "masks/slide3_lesions.png",         # optional: where PGDFC's probe should look
      "labels": "all"                               # optional: "last" = train on the last
    }                                               #   answer only (earlier ones are history)

- `<image>` appears once, in the first human turn: the thumbnail. Detail patches are
  appended to the LAST human turn (the question they were read for), each as its position
  text followed by one `<image>`; the collator expands every `<image>` to its tokens.
- Boxes are text, in relative coordinates of the level-0 slide (`rel_` frame):
  "label: [x0, y0, x1, y1]" with three decimals (`format_rel_box`, as the model config's
  `box_format`/`box_decimals`), what `omnipath.boxes` parses.
- `masks` of a gpt turn are the targets of its `<mask>` tokens, in order; `masks` of a
  human turn are the binary maps the mask ENCODER turns into that `<mask>` token's input
  embedding (a region the user points at). Mask files are grayscale PNGs (nonzero = inside)
  covering the same extent as the image (or slide region); any size, they are scaled.
- `attend` (optional) is a mask file of the same kind: the regions whose detail the question
  needs. The collator turns it into a target over the thumbnail's token grid for the
  trainer's probe-attention loss (`omnipath.train.probe_loss`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from omnipath.coords import L0Rect, RelBox, ThumbFrame
from omnipath.errors import OmniPathError

IMAGE_PLACEHOLDER = "<image>"
MASK_PLACEHOLDER = "<mask>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


class DatasetError(OmniPathError):
    """A training record is malformed or refers to files that cannot be read."""


def format_rel_box(box: RelBox, label: str | None = None, decimals: int = 3) -> str:
    """A box as the model writes it: "label: [x0, y0, x1, y1]", slide-relative (`rel_`),
    `decimals` as `OmniPathConfig.box_decimals` (3)."""
    x0, y0, x1, y1 = (f"{v:.{decimals}f}" for v in (box.x0, box.y0, box.x1, box.y1))
    coords = f"[{x0}, {y0}, {x1}, {y1}]"
    return f"{label}: {coords}" if label else coords


@dataclass(frozen=True)
class Turn:
    """One message: role "user" or "assistant", its text, and the mask files of its
    `<mask>` tokens (inputs for a user turn, targets for an assistant turn)."""

    role: str
    text: str
    masks: tuple[Path, ...] = ()


@dataclass(frozen=True)
class DetailRef:
    image: Path
    text: str


@dataclass(frozen=True)
class Record:
    """A parsed dataset record (paths resolved, nothing read yet)."""

    id: str
    turns: tuple[Turn, ...]
    image: Path | None = None
    slide: Path | None = None
    l0_region: L0Rect | None = None
    details: tuple[DetailRef, ...] = ()
    task: str = ""
    attend: Path | None = None
    # Only the last answer is a label (a follow-up whose earlier answers are history).
    last_answer_only: bool = False


@dataclass
class Example:
    """A record with its pixels loaded, ready for the collator.

    image: 3×S×S float in [0, 1], the padded square (`thumb_` frame, S = thumb side);
    details: P×3×d×d float in [0, 1] (P may be 0); mask_inputs / mask_targets: lists of
    1×S×S float in {0, 1}, in the thumb frame, in the order of the `<mask>` tokens of the
    user / assistant turns; attend: 1×S×S float in {0, 1} (thumb frame) or None.
    """

    record: Record
    image: torch.Tensor
    details: torch.Tensor
    mask_inputs: list[torch.Tensor] = field(default_factory=list)
    mask_targets: list[torch.Tensor] = field(default_factory=list)
    attend: torch.Tensor | None = None


def _rect(value: object, where: str) -> L0Rect:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 4
        or not all(isinstance(v, int) for v in value)
    ):
        raise DatasetError(f"{where}: l0_region must be four whole numbers [x, y, w, h].")
    x, y, w, h = value
    if w <= 0 or h <= 0:
        raise DatasetError(f"{where}: l0_region needs a positive width and height.")
    return L0Rect(x, y, w, h)


def parse_record(raw: dict, root: Path, where: str = "record") -> Record:
    """Validate one JSON record and resolve its paths against `root`."""
    if not isinstance(raw, dict):
        raise DatasetError(f"{where}: a record must be a JSON object.")
    rid = str(raw.get("id", where))
    where = f"record {rid!r}"
    image = raw.get("image")
    slide = raw.get("slide")
    if (image is None) == (slide is None):
        raise DatasetError(f"{where}: give exactly one of 'image' or 'slide'.")
    convs = raw.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise DatasetError(f"{where}: 'conversations' must be a non-empty list.")
    turns = []
    for i, msg in enumerate(convs):
        if not isinstance(msg, dict) or msg.get("from") not in ROLES:
            raise DatasetError(f"{where}: turn {i} needs 'from' = human or gpt.")
        text = msg.get("value")
        if not isinstance(text, str):
            raise DatasetError(f"{where}: turn {i} needs a text 'value'.")
        masks = tuple(root / m for m in msg.get("masks", []))
        if text.count(MASK_PLACEHOLDER) != len(masks):
            raise DatasetError(
                f"{where}: turn {i} has {text.count(MASK_PLACEHOLDER)} <mask> token(s) "
                f"but {len(masks)} mask file(s)."
            )
        turns.append(Turn(role=ROLES[msg["from"]], text=text, masks=masks))
    if turns[-1].role != "assistant":
        raise DatasetError(f"{where}: the last turn must be the model's answer (from: gpt).")
    n_image = sum(t.text.count(IMAGE_PLACEHOLDER) for t in turns)
    if n_image != 1 or IMAGE_PLACEHOLDER not in turns[0].text or turns[0].role != "user":
        raise DatasetError(f"{where}: '<image>' must appear exactly once, in the first human turn.")
    details = tuple(
        DetailRef(image=root / d["image"], text=str(d.get("text", "")))
        for d in raw.get("details", [])
    )
    region = raw.get("l0_region")
    attend = raw.get("attend")
    if attend is not None and not isinstance(attend, str):
        raise DatasetError(f"{where}: 'attend' must be the path of a mask file.")
    labels = raw.get("labels", "all")
    if labels not in ("all", "last"):
        raise DatasetError(f'{where}: \'labels\' must be "all" or "last" (answers trained on).')
    return Record(
        id=rid,
        turns=tuple(turns),
        image=root / image if image is not None else None,
        slide=root / slide if slide is not None else None,
        l0_region=_rect(region, where) if region is not None else None,
        details=details,
        task=str(raw.get("task", "")),
        attend=root / attend if attend is not None else None,
        last_answer_only=labels == "last",
    )


def read_records(path: str | Path) -> list[Record]:
    """All records of a .json (list) or .jsonl dataset file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"The dataset file {path} does not exist.")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            raws = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            raws = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"The dataset file {path.name} is not valid JSON.", detail=str(exc)
        ) from exc
    if not isinstance(raws, list):
        raise DatasetError(f"The dataset file {path.name} must hold a list of records.")
    return [parse_record(raw, path.parent, f"record {i}") for i, raw in enumerate(raws)]


# --- pixels ---------------------------------------------------------------------------------


def _open_image(path: Path, mode: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"The image {path.name} could not be read.", detail=str(exc)) from exc


def to_tensor(image) -> torch.Tensor:
    """PIL RGB → 3×H×W float32 in [0, 1]; PIL L → 1×H×W."""
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def pad_mask_to_square(mask, frame: ThumbFrame):
    """A mask covering the image extent → side×side L image in the thumb frame (padding 0),
    placed exactly where `ThumbFrame.render` puts the image content."""
    from PIL import Image

    content_w, content_h = frame.content_size()
    content = mask.convert("L").resize((content_w, content_h), Image.Resampling.NEAREST)
    square = Image.new("L", (frame.side, frame.side), 0)
    square.paste(content, ((frame.side - content_w) // 2, (frame.side - content_h) // 2))
    return square


def _image_of_record(record: Record, thumb_side: int):
    """(PIL RGB image of the record's view, its (width, height) in its own pixels)."""
    if record.image is not None:
        image = _open_image(record.image, "RGB")
        return image, image.size
    from omnipath.slide import open_slide

    with open_slide(record.slide) as slide:
        if record.l0_region is None:
            return slide.thumbnail(thumb_side), (slide.l0_width, slide.l0_height)
        rect = record.l0_region
        scale = thumb_side / max(rect.w, rect.h)
        out = (max(1, round(rect.w * scale)), max(1, round(rect.h * scale)))
        return slide.read_l0_region(rect, out), (rect.w, rect.h)


def load_example(record: Record, *, thumb_side: int, detail_side: int) -> Example:
    """Read a record's pixels: the padded square image, its detail patches and masks."""
    from PIL import Image

    view, (extent_w, extent_h) = _image_of_record(record, thumb_side)
    frame = ThumbFrame(l0_width=extent_w, l0_height=extent_h, side=thumb_side)
    image = to_tensor(frame.render(view))
    if record.details:
        patches = [
            _open_image(d.image, "RGB").resize(
                (detail_side, detail_side), Image.Resampling.BILINEAR
            )
            for d in record.details
        ]
        details = torch.stack([to_tensor(p) for p in patches])
    else:
        details = torch.zeros(0, 3, detail_side, detail_side)

    def square_mask(path: Path) -> torch.Tensor:
        return (to_tensor(pad_mask_to_square(_open_image(path, "L"), frame)) > 0.5).float()

    def masks_of(role: str) -> list[torch.Tensor]:
        return [square_mask(p) for turn in record.turns if turn.role == role for p in turn.masks]

    return Example(
        record=record,
        image=image,
        details=details,
        mask_inputs=masks_of("user"),
        mask_targets=masks_of("assistant"),
        attend=square_mask(record.attend) if record.attend is not None else None,
    )


class ConversationDataset(torch.utils.data.Dataset):
    """`torch` dataset over a JSON/JSONL file (or a list of records); items are `Example`s.

    Pixels are read lazily and kept in memory (`cache=True`): the synthetic sets are small
    and re-reading PNGs every epoch would dominate a CPU run.
    """

    def __init__(
        self,
        source: str | Path | Sequence[Record],
        *,
        thumb_side: int,
        detail_side: int,
        cache: bool = True,
    ) -> None:
        self.records = read_records(source) if isinstance(source, (str, Path)) else list(source)
        self.thumb_side = thumb_side
        self.detail_side = detail_side
        self._cache: dict[int, Example] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Example:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        example = load_example(
            self.records[index], thumb_side=self.thumb_side, detail_side=self.detail_side
        )
        if self._cache is not None:
            self._cache[index] = example
        return example
