"""The napari plugin: dock widgets, the Segmenter scripting API, reader, writers and sample data."""

from ._segmenter import Candidates, Segmenter

__all__ = ["Candidates", "Segmenter"]
