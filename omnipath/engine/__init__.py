"""The streaming engine: one loaded model answering questions about slides.

from omnipath.engine import Engine, AnswerOptions, Answer, Queued, Region, Box, MaskResult
"""

from omnipath.boxes import Box
from omnipath.engine.core import Engine
from omnipath.engine.options import AnswerOptions
from omnipath.engine.results import Answer, MaskResult, Queued, Region

__all__ = ["Answer", "AnswerOptions", "Box", "Engine", "MaskResult", "Queued", "Region"]
