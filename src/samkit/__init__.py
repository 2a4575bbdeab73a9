"""samkit: Segment Anything for napari, fast on a CPU."""

from .automatic import AutomaticMaskGenerator, masks_to_labels
from .checkpoint import load_model
from .errors import (
    Cancelled,
    CheckpointError,
    FormatError,
    ImageError,
    NoImageError,
    OutputError,
    ParameterError,
    PromptError,
    SamkitError,
)
from .predictor import Predictor
from .preprocess import to_rgb_uint8

__version__ = "0.1.0"

__all__ = [
    "AutomaticMaskGenerator",
    "Cancelled",
    "CheckpointError",
    "FormatError",
    "ImageError",
    "NoImageError",
    "OutputError",
    "ParameterError",
    "Predictor",
    "PromptError",
    "SamkitError",
    "load_model",
    "masks_to_labels",
    "to_rgb_uint8",
]
