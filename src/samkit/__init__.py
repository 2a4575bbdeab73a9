"""samkit: Segment Anything for napari, fast on a CPU."""

__version__ = "0.1.0"
