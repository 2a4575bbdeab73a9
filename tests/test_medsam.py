"""MedSAM's own input: stretch to the square, min-max to [0, 1], no mean/std, no padding."""

from __future__ import annotations

import numpy as np
import torch
from skimage.transform import resize

import samkit


def test_medsam_preprocessing_and_box_scaling(tiny_checkpoint):
    model = samkit.load_model(tiny_checkpoint, device="cpu", preprocessing="medsam")
    assert model.preprocessing == "medsam"
    predictor = samkit.Predictor(model, precision="fp32")
    rng = np.random.default_rng(0)
    image = rng.integers(20, 200, (90, 160, 3)).astype(np.uint8)
    predictor.set_image(image)
    size = model.img_size
    assert predictor.input_size == (size, size) and predictor.original_size == (90, 160)

    square = resize(image, (size, size), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
    x = torch.from_numpy(square).float().permute(2, 0, 1)[None]
    x = (x - x.min()) / (x.max() - x.min())
    with torch.no_grad():
        embedding = model.image_encoder(x)
    torch.testing.assert_close(predictor.get_image_embedding(), embedding)

    box = np.array([30.0, 20.0, 120.0, 70.0])
    masks, scores, low = predictor.predict(box=box, multimask_output=False)
    scaled = torch.tensor([[30 * size / 160, 20 * size / 90, 120 * size / 160, 70 * size / 90]])
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(None, scaled, None)
        ref_low, ref_iou = model.mask_decoder(embedding, model.prompt_encoder.get_dense_pe(), sparse, dense, False)
        ref_logits = torch.nn.functional.interpolate(ref_low, (90, 160), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(low, ref_low[0].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores, ref_iou[0].numpy(), rtol=1e-4, atol=1e-5)
    ref_masks = ref_logits[0].numpy() > 0
    # Two bilinear steps (to the square, then to the image) against one: only boundary pixels may differ.
    assert (masks != ref_masks).mean() < 0.02


def test_embedding_restore_keeps_medsam_geometry(tiny_checkpoint):
    model = samkit.load_model(tiny_checkpoint, device="cpu", preprocessing="medsam")
    predictor = samkit.Predictor(model, precision="fp32")
    image = np.random.default_rng(1).integers(0, 255, (70, 50, 3)).astype(np.uint8)
    predictor.set_image(image)
    expected = predictor.predict(box=np.array([5, 5, 40, 60]))
    other = samkit.Predictor(model, precision="fp32")
    other.set_image_embedding(predictor.get_image_embedding(), (70, 50))
    assert other.input_size == predictor.input_size
    for a, b in zip(other.predict(box=np.array([5, 5, 40, 60])), expected):
        np.testing.assert_array_equal(a, b)
