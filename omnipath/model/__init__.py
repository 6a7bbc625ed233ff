"""OmniPath model: configuration, the model, the tiny test tokenizer.

Importing this package registers nothing and loads no weights.
"""

from omnipath.model.configuration import (
    ModelInputError,
    OmniPathConfig,
    OmniPathMaskConfig,
    OmniPathPgdfcConfig,
    OmniPathUniConfig,
    TokenCountError,
    omnipath_13b_config,
    small_config,
    smollm2_135m_text_config,
    tiny_config,
)
from omnipath.model.modeling import (
    OmniPathForConditionalGeneration,
    OmniPathOutput,
    register_with_auto,
)
from omnipath.model.tokenization import build_tiny_tokenizer

__all__ = [
    "ModelInputError",
    "OmniPathConfig",
    "OmniPathForConditionalGeneration",
    "OmniPathMaskConfig",
    "OmniPathOutput",
    "OmniPathPgdfcConfig",
    "OmniPathUniConfig",
    "TokenCountError",
    "build_tiny_tokenizer",
    "omnipath_13b_config",
    "register_with_auto",
    "small_config",
    "smollm2_135m_text_config",
    "tiny_config",
]
