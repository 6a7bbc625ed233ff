"""Typed errors. Each carries `message`, a sentence a person understands.

The web layer shows `message` and nothing else; `detail` holds technical context for
the logs (never shown in the browser).
"""

from __future__ import annotations

# The most characters of a person's input that a message quotes back (echo()).
ECHO_LIMIT = 80


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """`value` as a message quotes it: its repr, cut to `limit` characters with "…" (a
    100,000-character id must not come back whole). Every message that repeats what a person
    sent goes through here."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # deeply nested data; an int of 4,300+ digits
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


class OmniPathError(Exception):
    """Base class of every error this project raises on purpose."""

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return self.message


# --- slides -----------------------------------------------------------------


class SlideError(OmniPathError):
    """A slide could not be opened or read."""


class UnsupportedSlideError(SlideError):
    """The file is not a slide or image format we can read."""


class EmptySlideError(SlideError):
    """The file is empty (0 bytes) or the image has no pixels."""


class TruncatedSlideError(SlideError):
    """The file ends before its data does (an interrupted upload or copy)."""


class DamagedSlideError(SlideError):
    """The file opens but some tiles cannot be decoded."""


class SlideTooLargeError(SlideError):
    """Reading the file would need more memory than the configured limits allow."""


# --- models ------------------------------------------------------------------


class ModelLoadError(OmniPathError):
    """A model could not be loaded."""


class ModelNotFoundError(ModelLoadError):
    """Neither a local folder nor a reachable / cached hub repository has this model."""


class PrecisionError(ModelLoadError):
    """The requested precision or quantization is not available on this device."""


class CapabilityError(OmniPathError):
    """The loaded model cannot do what was asked (e.g. masks on stock LLaVA)."""


# --- answering ------------------------------------------------------------------


class ModelInputError(OmniPathError, ValueError):
    """A tensor handed to the model has the wrong shape, range or count."""


class TokenCountError(ModelInputError):
    """Placeholder tokens in the text do not match the features provided for them."""


class OptionsError(OmniPathError):
    """An answer option is out of range or inconsistent."""


class TokenBudgetError(OptionsError):
    """The prompt, the image tokens and the detail patches do not fit the context."""


class GenerationError(OmniPathError):
    """Generation failed (out of memory, timeout, ...)."""


class DeviceOutOfMemoryError(GenerationError):
    """The accelerator ran out of memory; memory was freed and the next request can run."""


# --- storage / web -------------------------------------------------------------------


class NotFoundError(OmniPathError):
    """An id (slide, conversation, turn) that does not exist."""


class UploadTooLargeError(OmniPathError):
    """An upload larger than the configured limit."""


class NotUploadedError(OmniPathError):
    """A request named a file that was not uploaded to this server (a server path, a URL)."""
