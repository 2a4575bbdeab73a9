"""samkit: Segment Anything for napari, fast on a CPU."""

from .checkpoint import load_model
from .errors import CheckpointError, FormatError, ImageError, NoImageError, PromptError, SamkitError
from .predictor import Predictor
from .preprocess import to_rgb_uint8

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "FormatError",
    "ImageError",
    "NoImageError",
    "Predictor",
    "PromptError",
    "SamkitError",
    "load_model",
    "to_rgb_uint8",
]
