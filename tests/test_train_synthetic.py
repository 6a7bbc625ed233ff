"""The synthetic multi-task instruction set: splits, determinism, tasks, and that it trains."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from omnipath.boxes import parse_box_text
from omnipath.coords import l0_to_rel
from omnipath.train.nuclei import nucleus_boxes
from omnipath.train.synthetic_tasks import (
    SyntheticSetConfig,
    build_synthetic_set,
    split_of_slides,
)

CONFIG = SyntheticSetConfig(n_slides=3, slide_width=2048, slide_height=1536, seed=7)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return root, build_synthetic_set(root, CONFIG)


def test_splits_are_fixed_disjoint_and_cover_every_slide():
    splits = split_of_slides(20, seed=3)
    assert splits == split_of_slides(20, seed=3)
    assert splits != split_of_slides(20, seed=4)
    everything = splits["train"] + splits["val"] + splits["test"]
    assert sorted(everything) == list(range(20))
    assert len(splits["test"]) == 3 and len(splits["val"]) == 3


def test_no_test_slide_appears_in_training(built):
    root, paths = built
    manifest = json.loads((root / "manifest.json").read_text())
    test_stems = {f"slide{i:03d}" for i in manifest["splits"]["test"]}
    assert test_stems
    for split in ("train", "val"):
        for record in json.loads(paths[split].read_text()):
            assert record["id"].split("-")[0] not in test_stems


def test_every_task_is_present_and_answers_match_the_ground_truth(built):
    root, paths = built
    from omnipath.synth import read_synthetic_labels

    records = [r for p in paths.values() for r in json.loads(p.read_text())]
    assert {r["task"] for r in records} == set(CONFIG.tasks)
    for record in records:
        stem = record["id"].split("-")[0]
        truth = read_synthetic_labels(root / "slides" / f"{stem}.tiff")
        question, answer = (t["value"] for t in record["conversations"])
        if record["task"] == "grade":
            index = int(record["id"].rsplit("grade", 1)[1])
            assert answer == f"Grade {truth.lesions[index].grade}."
            # the question's box is the lesion's, in the slide-relative frame
            (box,) = parse_box_text(question)
            rel = l0_to_rel(truth.lesions[index].l0_rect, truth.width, truth.height)
            assert abs(box.x0 - rel.x0) < 2e-3 and abs(box.y1 - rel.y1) < 2e-3
            assert len(record["details"]) == CONFIG.detail_patches
            assert all(d["text"].startswith("Detail ") for d in record["details"])
        if record["task"] == "detect":
            assert len(parse_box_text(answer)) == len(truth.lesions)
        if record["task"] == "segment":
            (mask_file,) = record["conversations"][1]["masks"]
            assert np.asarray(Image.open(root / mask_file)).any()
        if record["task"] == "refer":
            index = int(record["id"].rsplit("refer", 1)[1])
            kind = truth.lesions[index].kind
            article = "An" if kind[0] in "aeiou" else "A"
            assert answer == f"{article} {kind} lesion, grade {truth.lesions[index].grade}."
        # slide-level records point the probe loss at every lesion; patch records do not
        if record["task"] == "nuclei":
            assert "attend" not in record
        else:
            attend = np.asarray(Image.open(root / record["attend"])) > 0
            labels = np.asarray(Image.open(truth.masks_path))
            lesion_values = [lesion.mask_value for lesion in truth.lesions]
            assert np.array_equal(attend, np.isin(labels, lesion_values))


def test_building_twice_gives_the_same_set(built, tmp_path):
    _, paths = built
    config = SyntheticSetConfig(
        n_slides=3, slide_width=2048, slide_height=1536, seed=7, tasks=("grade",)
    )
    again = build_synthetic_set(tmp_path, config)
    first = [r for r in json.loads(paths["train"].read_text()) if r["task"] == "grade"]
    assert json.loads(again["train"].read_text()) == first


def test_opt_in_patch_grade_records_are_detail_sized_and_carry_the_lesion_grade(tmp_path):
    from omnipath.synth import read_synthetic_labels

    config = SyntheticSetConfig(
        n_slides=1, slide_width=2048, slide_height=1536, seed=7, tasks=("patch_grade",)
    )
    paths = build_synthetic_set(tmp_path, config)
    records = [r for p in paths.values() for r in json.loads(p.read_text())]
    truth = read_synthetic_labels(tmp_path / "slides" / "slide000.tiff")
    assert len(records) == config.patch_grades * len(truth.lesions)
    for record in records:
        index = int(record["id"].split("patch_grade", 1)[1].split("_")[0])
        assert record["conversations"][1]["value"] == f"Grade {truth.lesions[index].grade}."
        assert "attend" not in record
        patch = Image.open(tmp_path / record["image"])
        # the engine's detail read: the encoder's detail side at 20× (0.5 µm/px)
        assert patch.size == (config.detail_side, config.detail_side)


def test_nucleus_boxes_find_drawn_nuclei():
    image = np.full((64, 64, 3), (235, 180, 215), np.uint8)  # eosin pink
    yy, xx = np.mgrid[:64, :64]
    for cy, cx, r in ((16, 16, 5), (44, 40, 7)):
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (70, 40, 120)  # hematoxylin purple
    boxes = nucleus_boxes(Image.fromarray(image), max_nuclei=6)
    assert len(boxes) == 2
    x0, y0, x1, y1 = boxes[0]
    assert abs((x0 + x1) / 2 * 64 - 16) < 1.5 and abs((y0 + y1) / 2 * 64 - 16) < 1.5


def test_the_set_loads_and_collates_for_tiny(built):
    from omnipath.model import build_tiny_tokenizer, tiny_config
    from omnipath.train.collator import ConversationCollator
    from omnipath.train.data import ConversationDataset

    _, paths = built
    config = tiny_config()
    tokenizer = build_tiny_tokenizer()
    dataset = ConversationDataset(paths["train"], thumb_side=128, detail_side=64)
    collator = ConversationCollator(
        tokenizer,
        image_token_id=config.image_token_id,
        mask_token_id=config.mask_token_id,
        num_image_tokens=config.num_image_tokens,
        tokens_per_patch=config.pgdfc_config.tokens_per_patch,
    )
    batch = collator([dataset[i] for i in range(len(dataset))])
    n_details = sum(len(r.details) for r in dataset.records)
    n_image = int((batch["input_ids"] == config.image_token_id).sum())
    assert n_image == len(dataset) * config.num_image_tokens + n_details * 4
    assert batch["mask_targets"] is not None and batch["mask_maps"] is not None


def test_follow_up_conversations_and_descriptions_match_the_ground_truth(tmp_path):
    """mini v3's records: a follow-up conversation (`FOLLOWUP_TURNS`) gives one record per
    turn after the count, each trained on its last answer, earlier answers as the engine
    renders history; a description lists every lesion with kind, grade and box."""
    from omnipath.synth import read_synthetic_labels
    from omnipath.train.followups import FOLLOWUP_TURNS, largest_lesion, second_from_left

    config = SyntheticSetConfig(
        n_slides=1,
        slide_width=2048,
        slide_height=1536,
        seed=11,
        tasks=("followup", "describe"),
        probe_ranked=True,
        box_decimals=2,
    )
    paths = build_synthetic_set(tmp_path, config)
    records = {r["id"]: r for p in paths.values() for r in json.loads(p.read_text())}
    truth = read_synthetic_labels(tmp_path / "slides" / "slide000.tiff")
    labels = np.asarray(Image.open(truth.masks_path))
    largest = largest_lesion([int((labels == les.mask_value).sum()) for les in truth.lesions])
    second = truth.lesions[second_from_left([les.l0_rect.x for les in truth.lesions])]

    described = records["slide000-describe"]["conversations"][1]["value"]
    assert described.startswith(f"{len(truth.lesions)} lesion")
    assert len(parse_box_text(described)) == len(truth.lesions)
    for lesion in truth.lesions:
        assert f"grade-{lesion.grade} {lesion.kind}" in described

    turns = [records[f"slide000-followup0_{t}"] for t in (1, 2, 3)]
    for t, record in enumerate(turns, start=1):
        conversation = record["conversations"]
        assert record["labels"] == "last" and len(conversation) == 2 * (t + 1)
        questions = [c["value"] for c in conversation[::2]]
        assert questions[0] == f"<image>\n{FOLLOWUP_TURNS[0][1]}"
        assert questions[1:] == [q for _, q, _ in FOLLOWUP_TURNS[1 : t + 1]]
        # history as the engine renders it: an earlier answer's <mask> is plain text
        assert all("<mask>" not in c["value"] for c in conversation[1:-1])
        assert len(record["details"]) == config.detail_patches
    segment, grade, box = (r["conversations"][-1] for r in turns)
    assert segment["value"] == "Here it is: <mask>"
    assert segment["masks"] == [f"masks/slide000_lesion{largest}.png"]
    assert grade["value"] == f"Grade {truth.lesions[largest].grade}."
    (answered,) = parse_box_text(box["value"])
    rel = l0_to_rel(second.l0_rect, truth.width, truth.height)
    assert abs(answered.x0 - rel.x0) <= 0.006 and abs(answered.y1 - rel.y1) <= 0.006
    assert box["value"].startswith(second.kind)


def test_probe_ranked_details_come_best_first_and_hold_the_asked_lesion(tmp_path):
    """With `probe_ranked`, a grade record's detail patches are in rank order (Detail 1, 2,
    ...) and include a read of the lesion asked about, as a trained probe would pick."""
    config = SyntheticSetConfig(
        n_slides=1,
        slide_width=2048,
        slide_height=1536,
        seed=11,
        tasks=("grade",),
        probe_ranked=True,
        grid=16,  # omnipath-mini v3's grid: every lesion holds a cell's read
    )
    paths = build_synthetic_set(tmp_path, config)
    from omnipath.synth import read_synthetic_labels

    truth = read_synthetic_labels(tmp_path / "slides" / "slide000.tiff")
    labels = np.asarray(Image.open(truth.masks_path))
    down = truth.mask_downsample
    for record in (r for p in paths.values() for r in json.loads(p.read_text())):
        index = int(record["id"].rsplit("grade", 1)[1])
        texts = [d["text"] for d in record["details"]]
        assert [t.split(" at ")[0] for t in texts] == [f"Detail {k}" for k in range(1, 5)]
        value = truth.lesions[index].mask_value
        on_lesion = []
        for text in texts:
            xs, ys = (part.split()[-1] for part in text.rstrip(":").split(", "))
            x0, x1 = (float(v) * truth.width / down for v in xs.split("-"))
            y0, y1 = (float(v) * truth.height / down for v in ys.split("-"))
            crop = labels[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1]
            on_lesion.append(bool((crop == value).any()))
        assert any(on_lesion)
