"""Both model classes the engine serves meet its stated contract (omnipath.model.protocol)."""

from __future__ import annotations

from omnipath.model.protocol import EngineModel
from tests.engine_models import tiny_llava_adapter, tiny_model

CONTRACT = [name for name in dir(EngineModel) if not name.startswith("_")] + list(
    EngineModel.__annotations__
)


def test_omnipath_and_the_llava_adapter_meet_the_engine_contract() -> None:
    for model in (tiny_model()[0], tiny_llava_adapter()):
        assert isinstance(model, EngineModel)
        missing = [name for name in CONTRACT if not hasattr(model, name)]
        assert not missing, (type(model).__name__, missing)
        assert isinstance(model.supports_masks, bool) and model.grid**2 == model.num_image_tokens


def test_something_else_does_not() -> None:
    import torch

    assert not isinstance(torch.nn.Linear(2, 2), EngineModel)
