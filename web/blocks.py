"""The gr.Blocks the UI is built on: Gradio's own argument check answered in a sentence, and
Gradio's file cache cleaned on a schedule."""

from __future__ import annotations

from typing import Any

import gradio as gr

# Gradio's cache (the copies of exports it serves, uploads): every 10 min, files over an hour old
# are deleted (an hour: a large upload waiting in the queue must still be there when its turn
# comes); the cache is emptied when the server stops.
GRADIO_CACHE_CLEANUP = (10 * 60, 60 * 60)


class OmniPathBlocks(gr.Blocks):
    """gr.Blocks that answer a call with too few values in a sentence (Gradio's own message
    lists the components by their object addresses) and clean Gradio's cache."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("delete_cache", GRADIO_CACHE_CLEANUP)
        super().__init__(**kwargs)

    def validate_inputs(self, block_fn: Any, inputs: list[Any]) -> None:
        wanted = len(block_fn.inputs)
        if len(inputs) < wanted:
            if block_fn.api_visibility == "public" and block_fn.api_name:
                names = ", ".join(name for name in block_fn.input_parameter_names if name)
                raise gr.Error(
                    f"/{block_fn.api_name} takes {_values(wanted)} ({names}); "
                    f"the call sent {len(inputs)}."
                )
            raise gr.Error(
                f"This action needs {_values(wanted)} but got {len(inputs)}; reload the page."
            )
        super().validate_inputs(block_fn, inputs)


def _values(count: int) -> str:
    return f"{count} value" + ("" if count == 1 else "s")
