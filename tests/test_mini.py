"""omnipath-mini: its configuration, and (slow) the shipped weights load offline and answer."""

from __future__ import annotations

import pytest

from omnipath.mini.model import DEFAULT_WEIGHTS_DIR, load_mini, mini_config
from omnipath.model import smollm2_135m_text_config


def test_mini_config_has_the_embedded_model_shapes():
    config = mini_config(smollm2_135m_text_config(49154), image_token_id=49152, mask_token_id=49153)
    assert config.num_image_tokens == 256
    assert config.resolved_thumb_side == 128
    assert config.pgdfc_config.tokens_per_patch == 4
    assert config.text_config.hidden_size == 576


def test_missing_weights_are_a_clear_error(tmp_path):
    from omnipath.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="python -m omnipath.mini.train"):
        load_mini(tmp_path)


@pytest.mark.slow
def test_shipped_weights_fit_in_50_mb():
    if not (DEFAULT_WEIGHTS_DIR / "adapter_model.safetensors").is_file():
        pytest.skip("omnipath-mini weights are not in this checkout")
    total = sum(p.stat().st_size for p in DEFAULT_WEIGHTS_DIR.iterdir() if p.is_file())
    assert total <= 50 * 1024 * 1024
    assert "not a diagnostic tool" in (DEFAULT_WEIGHTS_DIR / "README.md").read_text()


@pytest.mark.slow
def test_shipped_mini_loads_offline_and_answers_about_a_slide_with_a_box(tmp_path, monkeypatch):
    """The embedded model, offline, through the engine, on a generated slide like the sample.

    Checks the form of the answer (boxes the engine can place on the slide), not whether the
    boxes are right: accuracy on held-out slides is bench/ablation.py's job."""
    if not (DEFAULT_WEIGHTS_DIR / "adapter_model.safetensors").is_file():
        pytest.skip("omnipath-mini weights are not in this checkout")
    pytest.importorskip("gguf")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from omnipath.engine import AnswerOptions, Engine
    from omnipath.mini.model import MINI_MODEL_ID
    from omnipath.slide import open_slide
    from omnipath.synth import write_synthetic_slide

    truth = write_synthetic_slide(tmp_path / "sample.tiff", 4096, 3072, seed=12345, n_lesions=2)
    from omnipath.model.loading import LoadOptions, load_model

    loaded = load_model("mini", LoadOptions(dtype="float32", device="cpu"))  # the app's default
    assert loaded.model_id == MINI_MODEL_ID and loaded.kind == "omnipath"
    assert loaded.revision and len(loaded.revision) == 12  # content hash of the shipped weights
    engine = Engine(
        loaded.model, loaded.tokenizer, model_id=MINI_MODEL_ID, revision=loaded.revision, demo=True
    )
    with open_slide(truth.path) as slide:
        items = list(
            engine.answer(
                slide, [], "Find every lesion and give its box.", AnswerOptions(max_new_tokens=80)
            )
        )
    answer = items[-1]
    assert answer.error is None
    assert answer.boxes, answer.text
    assert all(
        0 <= b.l0_rect.x < truth.width and 0 <= b.l0_rect.y < truth.height for b in answer.boxes
    )
