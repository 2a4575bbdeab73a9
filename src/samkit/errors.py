"""The exceptions samkit raises. Every message says what was wrong and what to do."""


class SamkitError(Exception):
    """Base class of every error samkit raises on purpose."""


class CheckpointError(SamkitError):
    """A checkpoint file is missing, unreadable, unsafe or of an unknown architecture."""


class ImageError(SamkitError, ValueError):
    """An image cannot be turned into model input."""


class PromptError(SamkitError, ValueError):
    """Points, labels, boxes or mask prompts are malformed."""


class NoImageError(SamkitError, RuntimeError):
    """A prompt was given before an image was set."""


class FormatError(SamkitError, ValueError):
    """A mask, label image, RLE or annotation file is malformed or does not hold what was asked for."""


class ParameterError(SamkitError, ValueError):
    """A setting is out of range or conflicts with another setting."""


class OutputError(SamkitError, OSError):
    """A result could not be written: a read-only folder, a full disk, a path that is not allowed."""


class Cancelled(SamkitError):
    """Long work was cancelled on request before it finished."""


class OnnxExportError(SamkitError):
    """A model could not be exported to ONNX."""
