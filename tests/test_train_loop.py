"""Training on `tiny`: the loss falls, runs resume exactly, a saved checkpoint loads and answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from omnipath.model import OmniPathForConditionalGeneration, build_tiny_tokenizer, tiny_config
from omnipath.train.collator import ConversationCollator
from omnipath.train.data import ConversationDataset
from omnipath.train.probe_loss import split_probe_inputs
from omnipath.train.trainer import TrainConfig, TrainingError, list_checkpoints, train

ANSWERS = ["The lesion is grade 1.", "The lesion is grade 3."]


def _dataset(tmp_path, n=2):
    """n small images with one purple blob each; answers name a grade and give its mask;
    the blob is also the record's `attend` map."""
    records = []
    for i in range(n):
        image = np.full((48, 64, 3), 240, np.uint8)
        x = 8 + 24 * i
        image[12:36, x : x + 20] = (120, 40, 140)
        Image.fromarray(image).save(tmp_path / f"im{i}.png")
        mask = np.zeros((48, 64), np.uint8)
        mask[12:36, x : x + 20] = 255
        Image.fromarray(mask).save(tmp_path / f"m{i}.png")
        Image.fromarray(image[12:44, x : x + 32]).save(tmp_path / f"d{i}.png")
        records.append(
            {
                "id": f"r{i}",
                "image": f"im{i}.png",
                "details": [
                    {"image": f"d{i}.png", "text": "Detail 1 at x 0.10-0.40, y 0.20-0.80:"}
                ],
                "attend": f"m{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nGrade the lesion."},
                    {"from": "gpt", "value": f"{ANSWERS[i % 2]} <mask>", "masks": [f"m{i}.png"]},
                ],
            }
        )
    (tmp_path / "data.json").write_text(json.dumps(records))
    return tmp_path / "data.json"


def _setup(tmp_path, n=2):
    torch.manual_seed(0)
    config = tiny_config()
    model = OmniPathForConditionalGeneration(config)
    tokenizer = build_tiny_tokenizer()
    dataset = ConversationDataset(
        _dataset(tmp_path, n), thumb_side=model.thumb_side, detail_side=32
    )
    collator = ConversationCollator(
        tokenizer,
        image_token_id=config.image_token_id,
        mask_token_id=config.mask_token_id,
        num_image_tokens=model.num_image_tokens,
        tokens_per_patch=config.pgdfc_config.tokens_per_patch,
    )
    return model, tokenizer, dataset, collator


def _config(tmp_path, **kw):
    defaults = dict(output_dir=str(tmp_path / "run"), lr=3e-3, warmup_ratio=0.0, progress=False)
    defaults.update(kw)
    return TrainConfig(**defaults)


def test_a_few_steps_lower_both_losses(tmp_path):
    model, tokenizer, dataset, collator = _setup(tmp_path)
    result = train(model, dataset, collator, _config(tmp_path, max_steps=8, batch_size=2))
    assert result.steps == 8 and len(result.losses) == 8
    assert all(np.isnan(result.probe_losses))  # probe_weight 0: the paper's recipe
    assert result.lm_losses[-1] < 0.8 * result.lm_losses[0]
    assert result.mask_losses[-1] < result.mask_losses[0]
    assert result.checkpoint is not None and (result.checkpoint / "model.safetensors").is_file()


def test_probe_loss_moves_layer0_attention_onto_the_attend_map(tmp_path):
    model, tokenizer, dataset, collator = _setup(tmp_path)
    batch = collator([dataset[0], dataset[1]])
    assert (batch["probe_positions"] >= 0).all()
    assert batch["attention_targets"].sum(dim=1).min() > 0  # each blob covers some cells

    def share_on_target(m) -> float:
        """Ψ's share on the target cells, from the engine's own probe (no gradients)."""
        from omnipath import pgdfc

        inputs, probe_inputs = split_probe_inputs(batch)
        shares = []
        for row in range(2):
            end = int(probe_inputs["probe_positions"][row]) + 1
            ids = inputs["input_ids"][row : row + 1, :end]
            with torch.no_grad():
                thumb, _ = m.encode_images(inputs["images"][row : row + 1])
                embeds = m.merge_embeddings(ids, m.embed_tokens(ids), thumb)
                psi = pgdfc.probe_prepass(m.language_model, embeds).mean(dim=1)
            cells = psi[0][(ids[0] == m.config.image_token_id).nonzero().flatten()]
            target = probe_inputs["attention_targets"][row]
            shares.append(float((cells * target).sum() / cells.sum()))
        return sum(shares) / len(shares)

    before = share_on_target(model.eval())
    result = train(
        model, dataset, collator, _config(tmp_path, max_steps=8, batch_size=2, probe_weight=1.0)
    )
    assert len(result.probe_losses) == 8 and result.probe_losses[-1] < result.probe_losses[0]
    assert share_on_target(result.model.eval()) > before + 0.05
    assert result.lm_losses[-1] < result.lm_losses[0]  # the other losses still train


def test_lora_trains_the_non_lm_modules_and_saves_an_adapter(tmp_path):
    pytest.importorskip("peft")
    model, tokenizer, dataset, collator = _setup(tmp_path)
    before = model.projector.linear_1.weight.detach().clone()
    lm_before = model.language_model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    result = train(
        model, dataset, collator, _config(tmp_path, max_steps=3, batch_size=2, lora=True)
    )
    trained = result.model.base_model.model
    # the projector is trained in full (a PEFT modules_to_save copy), the LM's own weights frozen
    assert not torch.equal(trained.projector.modules_to_save["default"].linear_1.weight, before)
    assert torch.equal(
        trained.language_model.model.layers[0].self_attn.q_proj.base_layer.weight, lm_before
    )
    assert result.mask_losses[-1] < result.mask_losses[0]
    assert (result.checkpoint / "adapter_model.safetensors").is_file()
    # the <mask> row of the LM head is trainable, so the model can learn to emit <mask>
    head_deltas = [
        name
        for name, p in result.model.named_parameters()
        if p.requires_grad and "lm_head" in name and "trainable_tokens" in name
    ]
    assert head_deltas
    # the saved adapter, applied to a fresh model (not merged: see omnipath.mini.load_mini),
    # gives exactly the trained model's outputs
    from peft import PeftModel

    batch, _ = split_probe_inputs(collator([dataset[0]]))
    with torch.no_grad():
        reference = result.model.eval()(**batch).logits
        fresh, _, _, _ = _setup(tmp_path)
        loaded = PeftModel.from_pretrained(fresh, result.checkpoint).base_model.model.eval()
        torch.testing.assert_close(loaded(**batch).logits, reference)


def test_a_second_stage_keeps_the_adapter_and_frozen_towers_do_not_move(tmp_path):
    """omnipath-mini's stages 1 and 2: train() on a model an earlier stage wrapped adds no
    second LoRA layer, and `frozen_modules` keeps the (stage-0) towers as they were."""
    pytest.importorskip("peft")
    model, tokenizer, dataset, collator = _setup(tmp_path)
    towers = {k: v.detach().clone() for k, v in model.vision.state_dict().items()}
    first = train(
        model,
        dataset,
        collator,
        _config(tmp_path / "one", max_steps=2, lora=True, frozen_modules=("vision",)),
    )
    second = train(
        first.model,
        dataset,
        collator,
        _config(tmp_path / "two", max_steps=2, lora=True, frozen_modules=("vision",)),
    )
    assert second.model is first.model  # the same PEFT wrapper, not a wrapper around it
    inner = second.model.base_model.model
    q_proj = inner.language_model.model.layers[0].self_attn.q_proj
    assert not hasattr(q_proj.base_layer, "base_layer")  # one LoRA layer, not two nested
    vision = inner.vision.modules_to_save["default"]
    for name, value in vision.state_dict().items():
        assert torch.equal(value, towers[name]), name
    assert not any(p.requires_grad for p in vision.parameters())
    projector = inner.projector.modules_to_save["default"]
    assert all(p.requires_grad for p in projector.parameters())


def test_freezing_an_unknown_module_is_a_clear_error(tmp_path):
    model, tokenizer, dataset, collator = _setup(tmp_path)
    with pytest.raises(TrainingError, match="Cannot freeze \\['tower'\\]"):
        train(model, dataset, collator, _config(tmp_path, frozen_modules=("tower",)))


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    model, tokenizer, dataset, collator = _setup(tmp_path, n=3)
    config = _config(tmp_path, max_steps=4, save_every=2, keep_checkpoints=3)
    full = train(model, dataset, collator, config)
    checkpoints = list_checkpoints(config.output_dir)
    assert [c.name for c in checkpoints] == ["checkpoint-0000002", "checkpoint-0000004"]
    # simulate a crash after step 2: drop the last checkpoint and start again from scratch
    for path in checkpoints[-1].iterdir():
        path.unlink()
    checkpoints[-1].rmdir()
    fresh, _, _, _ = _setup(tmp_path, n=3)
    resumed = train(fresh, dataset, collator, config, resume=True)
    assert resumed.steps == 4
    np.testing.assert_allclose(resumed.losses, full.losses, rtol=1e-4)


def test_bad_settings_are_clear_errors(tmp_path):
    model, tokenizer, dataset, collator = _setup(tmp_path)
    with pytest.raises(TrainingError, match="positive"):
        train(model, dataset, collator, _config(tmp_path, lr=0.0))
    with pytest.raises(TrainingError, match="probe_weight must be zero or positive"):
        train(model, dataset, collator, _config(tmp_path, probe_weight=-1.0))


@pytest.mark.slow
def test_saved_checkpoint_loads_and_answers(tmp_path):
    model, tokenizer, dataset, collator = _setup(tmp_path, n=2)
    result = train(
        model,
        dataset,
        collator,
        _config(tmp_path, max_steps=30, batch_size=2, lr=5e-3),
        tokenizer=tokenizer,
    )
    loaded = OmniPathForConditionalGeneration.from_pretrained(result.checkpoint).eval()
    trained = result.model.eval()
    for index in range(2):
        prompt = collator.prompt(dataset[index])
        with torch.no_grad():
            out = loaded.generate(**prompt, max_new_tokens=12, do_sample=False)
            reference = trained.generate(**prompt, max_new_tokens=12, do_sample=False)
        answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
        # the checkpoint answers exactly as the model that was trained, in the trained form
        assert torch.equal(out, reference)
        assert answer.strip().split(" <mask>")[0] in ANSWERS, answer


def test_command_line_trains_tiny_and_resumes(tmp_path, capsys):
    from omnipath.train.__main__ import main

    data = _dataset(tmp_path)
    args = [
        "--model",
        "tiny",
        "--data",
        str(data),
        "--output",
        str(tmp_path / "cli"),
        "--lr",
        "1e-3",
    ]
    main(args + ["--max-steps", "2", "--save-every", "1"])
    assert "2 steps" in capsys.readouterr().out
    main(args + ["--max-steps", "3"])  # continues from checkpoint 2
    assert "3 steps" in capsys.readouterr().out
    assert list_checkpoints(tmp_path / "cli")[-1].name == "checkpoint-0000003"


def test_training_loads_tiny_as_the_server_does() -> None:
    """One loader: `python -m omnipath.train --model tiny` starts from the very weights the
    server serves as "tiny" (load_model), not from a second construction."""
    from omnipath.model.loading import LoadOptions, load_model
    from omnipath.train.__main__ import _load

    trained, _ = _load("tiny")
    served = load_model("tiny", LoadOptions(dtype="float32", device="cpu")).model
    for (name, a), (_, b) in zip(
        trained.state_dict().items(), served.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_the_probe_target_ranks_every_cell_instead_of_rewarding_one():
    """v2's loss, −log(Ψ's share on lesion cells), was met by ALL of Ψ on one lesion cell
    (ranks 2..S became ties). The coverage cross-entropy prefers Ψ spread as the coverage is:
    more lesion, more attention, and a floor for the rest."""
    from omnipath.train.probe_loss import coverage_cross_entropy

    coverage = torch.tensor([1.0, 0.6, 0.2, 0.0, 0.0])
    collapsed = torch.tensor([1.0, 1e-7, 1e-7, 1e-7, 1e-7])
    graded = coverage + 0.02
    assert coverage_cross_entropy(graded, coverage) < coverage_cross_entropy(collapsed, coverage)
    reversed_order = graded.flip(0)
    assert coverage_cross_entropy(graded, coverage) < coverage_cross_entropy(
        reversed_order, coverage
    )
