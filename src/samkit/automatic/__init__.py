"""Segment everything: grid mode (a grid of point prompts), on whole images or tile by tile."""

from .grid import (
    EDGE_TOLERANCE,
    FULL_RES_BYTES,
    GENERATOR_OPTIONS,
    OUTPUT_MODES,
    AutomaticMaskGenerator,
    box_nms,
    count_above,
    crop_boxes,
    generator_options,
    mask_boxes,
    masks_to_labels,
    point_grid,
    remove_small_regions,
    stability_score,
)

__all__ = [
    "EDGE_TOLERANCE",
    "FULL_RES_BYTES",
    "GENERATOR_OPTIONS",
    "OUTPUT_MODES",
    "AutomaticMaskGenerator",
    "box_nms",
    "count_above",
    "crop_boxes",
    "generator_options",
    "mask_boxes",
    "masks_to_labels",
    "point_grid",
    "remove_small_regions",
    "stability_score",
]
