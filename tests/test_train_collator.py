"""The conversation format and the collator: image-token expansion, labels, mask placement."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from omnipath.coords import RelBox
from omnipath.train.collator import IGNORE_INDEX, ConversationCollator
from omnipath.train.data import ConversationDataset, DatasetError, format_rel_box, read_records

N_IMAGE, P_DETAIL, SIDE = 16, 4, 32


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("gguf")
    from omnipath.errors import ModelNotFoundError
    from omnipath.train.base_llm import load_smollm2_tokenizer

    try:
        return load_smollm2_tokenizer()
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))


def _write_dataset(tmp_path, records):
    Image.new("RGB", (40, 20), (200, 100, 150)).save(tmp_path / "wide.png")  # 2:1 → padded
    Image.new("RGB", (8, 8), (90, 40, 120)).save(tmp_path / "detail.png")
    mask = np.zeros((20, 40), np.uint8)
    mask[:, :20] = 255  # left half of the image
    Image.fromarray(mask).save(tmp_path / "left.png")
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path


def _collator(tokenizer):
    return ConversationCollator(
        tokenizer,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        mask_token_id=tokenizer.convert_tokens_to_ids("<mask>"),
        num_image_tokens=N_IMAGE,
        tokens_per_patch=P_DETAIL,
    )


def test_box_text_format():
    assert (
        format_rel_box(RelBox(0.1, 0.25, 0.5, 1.0), "lesion")
        == "lesion: [0.100, 0.250, 0.500, 1.000]"
    )


def test_collator_expands_images_labels_answers_and_places_masks(tmp_path, tokenizer):
    records = [
        {
            "id": "a",
            "image": "wide.png",
            "details": [{"image": "detail.png", "text": "Detail 1 at x 0.10-0.20, y 0.30-0.40:"}]
            * 2,
            "conversations": [
                {"from": "human", "value": "<image>\nSegment the lesion."},
                {"from": "gpt", "value": "Here it is: <mask>", "masks": ["left.png"]},
            ],
        },
        {
            "id": "b",
            "image": "wide.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is in <mask>?", "masks": ["left.png"]},
                {"from": "gpt", "value": "Stroma."},
                {"from": "human", "value": "Sure?"},
                {"from": "gpt", "value": "Yes."},
            ],
        },
    ]
    path = _write_dataset(tmp_path, records)
    dataset = ConversationDataset(path, thumb_side=SIDE, detail_side=8)
    collator = _collator(tokenizer)
    batch = collator([dataset[0], dataset[1]])
    image_id = collator.image_token_id
    mask_id = collator.mask_token_id
    ids, labels, attn = batch["input_ids"], batch["labels"], batch["attention_mask"]

    # image tokens: N for the thumbnail plus P per detail patch; never labels
    assert (ids[0] == image_id).sum() == N_IMAGE + 2 * P_DETAIL
    assert (ids[1] == image_id).sum() == N_IMAGE
    assert not ((labels != IGNORE_INDEX) & (ids == image_id)).any()
    # the thumbnail's tokens are contiguous; detail blocks follow the question
    first = (ids[0] == image_id).nonzero().flatten()
    assert (first[:N_IMAGE] == torch.arange(first[0], first[0] + N_IMAGE)).all()
    assert batch["detail_images"][0].shape == (2, 3, 8, 8)
    assert batch["detail_images"][1] is None

    # labels: exactly the answers' tokens (plus the end-of-turn marker)
    def label_text(row):
        keep = labels[row][labels[row] != IGNORE_INDEX]
        return tokenizer.decode(keep)

    assert label_text(0).startswith("Here it is: <mask>")
    assert "Segment" not in label_text(0)
    assert "Stroma." in label_text(1) and "Yes." in label_text(1)
    assert "Sure?" not in label_text(1) and "What is in" not in label_text(1)
    # the <mask> in the answer is a label; the one in the question is not
    assert ((ids[0] == mask_id) & (labels[0] == mask_id)).sum() == 1
    assert ((ids[1] == mask_id) & (labels[1] == IGNORE_INDEX)).sum() == 1
    # padding: right side, masked out of attention and labels
    pad_row = 0 if attn[0].sum() < attn[1].sum() else 1
    assert attn[pad_row, -1] == 0 and attn[pad_row, 0] == 1
    assert (labels[pad_row][attn[pad_row] == 0] == IGNORE_INDEX).all()

    # masks in the thumb frame: the 40×20 image is padded to a 32 px square (8 px bars on
    # top and bottom); the left half of the content is inside the mask
    target = batch["mask_targets"]
    assert target.shape == (1, 1, SIDE, SIDE)
    assert target[0, 0, 16, 4] == 1 and target[0, 0, 16, 28] == 0
    assert target[0, 0, 2, 4] == 0  # padding is never mask
    assert batch["mask_maps"].shape == (1, 1, SIDE, SIDE)
    positions = batch["mask_input_positions"]
    assert positions.sum() == 1 and positions[1].sum() == 1  # sample 1's question, not 0's answer
    # the image itself is padded white
    assert torch.allclose(batch["images"][0, :, 2, 16], torch.ones(3))


def test_mask_count_mismatch_is_a_clear_error(tmp_path):
    path = _write_dataset(
        tmp_path,
        [
            {
                "id": "x",
                "image": "wide.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nSegment."},
                    {"from": "gpt", "value": "<mask> and <mask>", "masks": ["left.png"]},
                ],
            }
        ],
    )
    with pytest.raises(DatasetError, match="2 <mask> token"):
        read_records(path)


def test_missing_image_placeholder_is_a_clear_error(tmp_path):
    path = _write_dataset(
        tmp_path,
        [
            {
                "id": "x",
                "image": "wide.png",
                "conversations": [
                    {"from": "human", "value": "No image here."},
                    {"from": "gpt", "value": "Ok."},
                ],
            }
        ],
    )
    with pytest.raises(DatasetError, match="exactly once"):
        read_records(path)


def test_too_long_record_is_a_clear_error(tmp_path, tokenizer):
    path = _write_dataset(
        tmp_path,
        [
            {
                "id": "x",
                "image": "wide.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nHi"},
                    {"from": "gpt", "value": "Ok."},
                ],
            }
        ],
    )
    collator = _collator(tokenizer)
    collator.max_length = 10
    dataset = ConversationDataset(path, thumb_side=SIDE, detail_side=8)
    with pytest.raises(DatasetError, match="max_length"):
        collator([dataset[0]])


def test_probe_position_is_the_token_the_engine_probes_and_attend_becomes_grid_cells(
    tmp_path, tokenizer
):
    """Training's L_probe must read Ψ from the same token as inference: the engine's prefix
    (chat up to the question's last token, detail blocks tokenized apart) must be exactly the
    collator's ids up to `probe_positions`."""
    from omnipath.engine.prompt import build_prompt

    question = "What is the grade of the carcinoma at [0.100, 0.200, 0.300, 0.400]?"
    records = [
        {
            "id": "with-details",
            "image": "wide.png",
            "attend": "left.png",
            "details": [{"image": "detail.png", "text": "Detail 1 at x 0.10-0.20, y 0.30-0.40:"}],
            "conversations": [
                {"from": "human", "value": f"<image>\n{question}"},
                {"from": "gpt", "value": "Grade 2."},
            ],
        },
        {
            "id": "plain",
            "image": "wide.png",
            "conversations": [
                {"from": "human", "value": f"<image>\n{question}"},
                {"from": "gpt", "value": "Grade 3."},
            ],
        },
    ]
    dataset = ConversationDataset(_write_dataset(tmp_path, records), thumb_side=SIDE, detail_side=8)
    collator = _collator(tokenizer)
    batch = collator([dataset[0], dataset[1]])
    engine = build_prompt(
        tokenizer,
        [],
        question,
        image_token_id=collator.image_token_id,
        num_image_tokens=N_IMAGE,
        mask_token_id=collator.mask_token_id,
    )
    for row in range(2):
        probe = int(batch["probe_positions"][row])
        assert batch["input_ids"][row, : probe + 1].tolist() == engine.prefix_ids
    # 4×4 token grid over the 32 px square: the 40×20 image fills rows 1-2 (8 px bars above
    # and below); "left.png" covers its left half → 2 columns × 2 rows of cells
    targets = batch["attention_targets"]
    expected = torch.zeros(4, 4)
    expected[1:3, 0:2] = 1
    assert torch.equal(targets[0].reshape(4, 4), expected)
    assert not targets[1].any()  # no attend map: no target


def test_bad_attend_maps_are_clear_errors(tmp_path):
    record = {
        "id": "x",
        "image": "wide.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhere?"},
            {"from": "gpt", "value": "There."},
        ],
    }
    path = _write_dataset(tmp_path, [{**record, "attend": ["left.png"]}])
    with pytest.raises(DatasetError, match="'attend' must be the path of a mask file"):
        read_records(path)
    path = _write_dataset(tmp_path, [{**record, "attend": "missing.png"}])
    dataset = ConversationDataset(path, thumb_side=SIDE, detail_side=8)
    with pytest.raises(DatasetError, match="could not be read"):
        dataset[0]


def test_training_and_serving_share_one_prompt_renderer() -> None:
    from omnipath.engine import prompt
    from omnipath.train import collator

    assert collator.render_chat is prompt.render_chat


def test_a_follow_up_record_trains_its_last_answer_only(tmp_path, tokenizer):
    """`"labels": "last"`: the earlier answers are history (what the engine would have said),
    not targets; without it every answer is a label."""
    turns = [
        {"from": "human", "value": "<image>\nHow many lesions are on this slide?"},
        {"from": "gpt", "value": "There are 2 lesions."},
        {"from": "human", "value": "What is its grade?"},
        {"from": "gpt", "value": "Grade 3."},
    ]
    records = [
        {"id": "last", "image": "wide.png", "conversations": turns, "labels": "last"},
        {"id": "all", "image": "wide.png", "conversations": turns},
    ]
    dataset = ConversationDataset(_write_dataset(tmp_path, records), thumb_side=SIDE, detail_side=8)
    batch = _collator(tokenizer)([dataset[0], dataset[1]])
    labels = batch["labels"]
    texts = [tokenizer.decode(labels[row][labels[row] != IGNORE_INDEX]) for row in range(2)]
    assert "Grade 3." in texts[0] and "2 lesions" not in texts[0]
    assert "Grade 3." in texts[1] and "2 lesions" in texts[1]
    bad = _write_dataset(tmp_path, [{**records[0], "labels": "first"}])
    with pytest.raises(DatasetError, match="'labels' must be"):
        read_records(bad)
