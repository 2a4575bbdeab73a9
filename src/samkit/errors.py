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
