"""Synthetic nuclei and stained cells: deterministic, with labels that match what is visible."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.color import rgb2gray
from skimage.segmentation import find_boundaries

from samkit import ParameterError, synthetic


def brightness(image: np.ndarray) -> np.ndarray:
    """Nuclei are bright on dark; stained cells dark on light: make objects bright in both."""
    return image.astype(np.float64) if image.ndim == 2 else 1 - rgb2gray(image)


@pytest.fixture(scope="module", params=["nuclei", "cells"])
def sample(request):
    make = getattr(synthetic, request.param)
    return request.param, [make(seed=seed) for seed in range(3)]


def test_shapes_and_dtypes():
    image, labels = synthetic.nuclei((100, 140), seed=3)
    assert image.shape == (100, 140) and image.dtype == np.uint16
    assert labels.shape == (100, 140) and labels.dtype == np.int32
    image, labels = synthetic.cells((120, 90), n=5, seed=3)
    assert image.shape == (120, 90, 3) and image.dtype == np.uint8
    assert labels.shape == (120, 90) and labels.dtype == np.int32
    assert 1 <= labels.max() <= 5


def test_same_seed_same_image_other_seed_other_image():
    for make in (synthetic.nuclei, synthetic.cells):
        a, b, c = make(seed=7), make(seed=7), make(seed=8)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert not np.array_equal(a[0], c[0])
        assert not np.array_equal(a[1], c[1])


def test_labels_consecutive_and_each_a_visible_piece(sample):
    _, pairs = sample
    for _, labels in pairs:
        ids = np.unique(labels)
        n = labels.max()
        assert n >= 10
        np.testing.assert_array_equal(ids, np.arange(n + 1))
        areas = np.bincount(labels.ravel())[1:]
        assert areas.min() >= synthetic.MIN_AREA
        for index in range(1, n + 1):
            assert ndimage.label(labels == index, structure=np.ones((3, 3)))[1] == 1


def test_objects_stand_out_from_their_surroundings(sample):
    kind, pairs = sample
    for image, labels in pairs:
        signal = brightness(image)
        background = signal[labels == 0]
        spread = background.std()
        for index in range(1, labels.max() + 1):
            inside = labels == index
            ring = ndimage.binary_dilation(inside, iterations=6) & ~ndimage.binary_dilation(inside, iterations=3)
            ring &= labels == 0
            # The core of each object against nearby background: clearly brighter (or more stained).
            core = ndimage.binary_erosion(inside, iterations=2)
            if ring.sum() >= 10 and core.any():
                assert signal[core].mean() > signal[ring].mean() + 3 * spread, (kind, index)
        assert signal[labels > 0].mean() > background.mean() + 5 * spread


def test_touching_objects_exist(sample):
    _, pairs = sample
    for _, labels in pairs:
        between = find_boundaries(labels, mode="inner") & (labels > 0)
        neighbour = ndimage.grey_dilation(labels, size=3)
        touching = np.unique(labels[between & (neighbour != labels) & (neighbour > 0)])
        assert len(touching) >= 2


def test_nuclei_sizes_and_noise():
    image, labels = synthetic.nuclei(seed=0)
    areas = np.bincount(labels.ravel())[1:]
    assert np.pi * 6**2 * 0.5 < np.median(areas) < np.pi * 25**2
    background = image[labels == 0].astype(float)
    assert 200 < np.median(background) < 900
    # Noise: neighbouring background pixels differ, as in a real camera image.
    assert np.abs(np.diff(image.astype(float), axis=1))[labels[:, 1:] == 0].mean() > 5


def test_dataset_kinds_and_determinism():
    mixed = synthetic.dataset("mixed", count=4, shape=(64, 80), seed=5)
    assert [item[0].ndim for item in mixed] == [2, 3, 2, 3]
    assert all(item[1].shape == (64, 80) for item in mixed)
    again = synthetic.dataset("mixed", count=4, shape=(64, 80), seed=5)
    for (a, la), (b, lb) in zip(mixed, again):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    other = synthetic.dataset("mixed", count=4, shape=(64, 80), seed=6)
    assert not np.array_equal(mixed[0][0], other[0][0])
    images = synthetic.dataset("nuclei", count=3, shape=(64, 64), seed=0)
    assert not np.array_equal(images[0][0], images[1][0])


def test_bad_arguments():
    with pytest.raises(ParameterError, match="kind"):
        synthetic.dataset("tissue", count=2)
    with pytest.raises(ParameterError, match="32"):
        synthetic.nuclei((16, 16))
    with pytest.raises(ParameterError, match="positive"):
        synthetic.cells(n=0)
