"""TEMPORARY stand-in (not committed)."""
import numpy as np

from ..preprocess import _channels_last, _pick_channels, percentile_limits, to_rgb_uint8


class ImageSource:
    def __init__(self, image, channel_axis=None, channels=None, contrast_limits=None):
        self.image = np.asarray(image)
        self.channel_axis, self.channels = channel_axis, channels
        full = _pick_channels(_channels_last(self.image, channel_axis), channels)
        self.shape = full.shape[:2]
        self.dtype = self.image.dtype
        if contrast_limits is None and full.dtype != np.uint8:
            contrast_limits = [percentile_limits(full[..., c]) for c in range(full.shape[-1])]
        self.contrast_limits = contrast_limits
        self._full = full
    def read(self, box):
        return self._full[box.slices]
    def rgb(self, box):
        return to_rgb_uint8(self.read(box), channel_axis=-1, contrast_limits=self.contrast_limits)
def as_source(image, *, channel_axis=None, channels=None, contrast_limits=None):
    if isinstance(image, ImageSource):
        return image
    return ImageSource(image, channel_axis, channels, contrast_limits)
