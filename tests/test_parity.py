"""samkit answers prompts as the official segment-anything package does (fp32, shared random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import ARCHITECTURES, TINY_VIT, official_twin, random_state_dict, write_checkpoint
from segment_anything import SamPredictor

import samkit

TOL = 1e-4  # relative to the tensor's scale
LOGIT_MARGIN = 1e-3  # masks may differ only where the official logit is this close to 0


def assert_close(ours: np.ndarray, ref: np.ndarray, what: str) -> None:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, what
    err = np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12)
    assert err <= TOL, f"{what}: relative error {err:.2e}"


def assert_same_masks(ours: np.ndarray, ref_logits: np.ndarray) -> None:
    differ = ours != (ref_logits > 0)
    assert not (differ & (np.abs(ref_logits) > LOGIT_MARGIN)).any()


def image(h: int, w: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = 120 + 80 * np.sin(xx / 17.0) * np.cos(yy / 23.0)
    img = base[..., None] + rng.normal(0, 20, (h, w, 3))
    img[(yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (min(h, w) / 5) ** 2] = (250, 40, 40)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(ours, official) predictors on the same 300x517 image and the same tiny ViT weights."""
    path = write_checkpoint(tmp_path_factory.mktemp("parity") / "tiny.pth", TINY_VIT, seed=0)
    ours = samkit.Predictor(samkit.load_model(path, device="cpu"), precision="fp32")
    ref = SamPredictor(official_twin(random_state_dict(TINY_VIT, 0), TINY_VIT))
    img = image(300, 517)
    ours.set_image(img)
    ref.set_image(img)
    return ours, ref


def test_embedding_matches(pair):
    ours, ref = pair
    assert ours.original_size == ref.original_size
    assert ours.input_size == tuple(ref.input_size)
    assert_close(ours.get_image_embedding(), ref.get_image_embedding(), "embedding")


POINTS = np.array([[170.0, 150.0], [400.0, 60.0], [30.0, 280.0], [250.0, 200.0]])
CASES = {
    "one point": {"point_coords": POINTS[:1], "point_labels": np.array([1])},
    "points pos and neg": {"point_coords": POINTS, "point_labels": np.array([1, 0, 1, 0])},
    "box": {"box": np.array([100.0, 80.0, 300.0, 240.0])},
    "box and points": {
        "point_coords": POINTS[:2], "point_labels": np.array([1, 0]), "box": np.array([100.0, 80.0, 300.0, 240.0])
    },
    "fractional point on the edge": {"point_coords": np.array([[516.4, 0.2]]), "point_labels": np.array([1])},
}


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_predict_matches(pair, case, multimask):
    ours, ref = pair
    kwargs = dict(CASES[case], multimask_output=multimask)
    masks, scores, low = ours.predict(**kwargs)
    ref_logits, ref_scores, ref_low = ref.predict(**kwargs, return_logits=True)
    assert masks.dtype == bool and masks.shape == ref_logits.shape == (3 if multimask else 1, 300, 517)
    assert_close(scores, ref_scores, "scores")
    assert_close(low, ref_low, "low-res logits")
    assert_same_masks(masks, ref_logits)
    logits, _, _ = ours.predict(**kwargs, return_logits=True)
    assert_close(logits, ref_logits, "full-size logits")


@pytest.mark.parametrize("multimask", [True, False])
def test_mask_input_matches(pair, multimask):
    ours, ref = pair
    first = {"point_coords": POINTS[:1], "point_labels": np.array([1])}
    _, _, low = ref.predict(**first)
    kwargs = {"point_coords": POINTS[:2], "point_labels": np.array([1, 0]), "multimask_output": multimask}
    masks, scores, low_out = ours.predict(**kwargs, mask_input=low[:1])
    ref_logits, ref_scores, ref_low = ref.predict(**kwargs, mask_input=low[:1], return_logits=True)
    assert_close(scores, ref_scores, "scores")
    assert_close(low_out, ref_low, "low-res logits")
    assert_same_masks(masks, ref_logits)


def test_mask_input_alone_matches(pair):
    ours, ref = pair
    _, _, low = ref.predict(point_coords=POINTS[:1], point_labels=np.array([1]))
    masks, scores, _ = ours.predict(mask_input=low[:1])
    ref_logits, ref_scores, _ = ref.predict(mask_input=low[:1], return_logits=True)
    assert_close(scores, ref_scores, "scores")
    assert_same_masks(masks, ref_logits)


def test_predict_torch_many_boxes_matches(pair):
    ours, ref = pair
    rng = np.random.default_rng(3)
    x0 = rng.uniform(0, 400, 12)
    y0 = rng.uniform(0, 200, 12)
    boxes = np.stack([x0, y0, x0 + rng.uniform(10, 110, 12), y0 + rng.uniform(10, 90, 12)], axis=1)
    boxes_t = ref.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float32), ref.original_size)
    masks, scores, low = ours.predict_torch(None, None, boxes=boxes_t, multimask_output=False)
    ref_logits, ref_scores, ref_low = ref.predict_torch(None, None, boxes=boxes_t, multimask_output=False,
                                                        return_logits=True)
    assert masks.shape == (12, 1, 300, 517)
    assert_close(scores.numpy(), ref_scores.numpy(), "scores")
    assert_close(low.numpy(), ref_low.numpy(), "low-res logits")
    assert_same_masks(masks.numpy(), ref_logits.numpy())


def test_predict_torch_padded_points_match(pair):
    ours, ref = pair
    coords = torch.tensor([[[300.0, 120.0], [100.0, 50.0]], [[200.0, 200.0], [0.0, 0.0]]])
    labels = torch.tensor([[1, 0], [1, -1]])
    masks, scores, _ = ours.predict_torch(coords, labels)
    ref_logits, ref_scores, _ = ref.predict_torch(coords, labels, return_logits=True)
    assert_close(scores.numpy(), ref_scores.numpy(), "scores")
    assert_same_masks(masks.numpy(), ref_logits.numpy())


def test_square_and_tall_images(tmp_path):
    path = write_checkpoint(tmp_path / "tiny.pth", TINY_VIT, seed=4)
    ours = samkit.Predictor(samkit.load_model(path, device="cpu"), precision="fp32")
    ref = SamPredictor(official_twin(random_state_dict(TINY_VIT, 4), TINY_VIT))
    for h, w in [(256, 256), (411, 97), (64, 64)]:
        img = image(h, w, seed=h)
        ours.set_image(img)
        ref.set_image(img)
        assert_close(ours.get_image_embedding(), ref.get_image_embedding(), "embedding")
        kwargs = {"point_coords": np.array([[w / 2, h / 3]]), "point_labels": np.array([1])}
        masks, scores, _ = ours.predict(**kwargs)
        ref_logits, ref_scores, _ = ref.predict(**kwargs, return_logits=True)
        assert_close(scores, ref_scores, "scores")
        assert_same_masks(masks, ref_logits)


def test_full_vit_b_matches(tmp_path):
    """The official vit_b architecture at full size (one image, a few prompts)."""
    config = ARCHITECTURES["vit_b"]
    state = random_state_dict(config, seed=7)
    path = tmp_path / "vit_b.pth"
    torch.save(state, path)
    ours = samkit.Predictor(samkit.load_model(path, device="cpu"), precision="fp32")
    from segment_anything import sam_model_registry

    official = sam_model_registry["vit_b"]()
    official.load_state_dict(state)
    ref = SamPredictor(official.eval())
    img = image(300, 517)
    ours.set_image(img)
    ref.set_image(img)
    assert_close(ours.get_image_embedding(), ref.get_image_embedding(), "embedding")
    for case in ("one point", "points pos and neg", "box and points"):
        masks, scores, low = ours.predict(**CASES[case])
        ref_logits, ref_scores, ref_low = ref.predict(**CASES[case], return_logits=True)
        assert_close(scores, ref_scores, "scores")
        assert_close(low, ref_low, "low-res logits")
        assert_same_masks(masks, ref_logits)


def test_sam_postprocess_masks_matches_official_and_the_direct_upsampler(pair):
    ours, ref = pair
    low = torch.randn(2, 3, 64, 64) * 4  # the reduced model's low-res size (256 px input / 4)
    expected = ref.model.postprocess_masks(low, ref.input_size, ref.original_size)
    two_step = ours.model.postprocess_masks(low, ours.input_size, ours.original_size)
    assert_close(two_step.numpy(), expected.numpy(), "postprocess_masks")
    assert_close(ours.upsample_logits(low).numpy(), expected.numpy(), "direct upsampling")


def test_direct_upsampler_of_an_image_the_size_of_the_input_uses_two_taps_per_axis():
    from samkit.transforms import MaskUpsampler

    low = torch.randn(3, 64, 64) * 4
    upsample = MaskUpsampler(64, 256, (256, 256), (256, 256), torch.device("cpu"))
    assert upsample.row_index.shape == upsample.col_index.shape == (256, 2)
    padded = torch.nn.functional.interpolate(low[None], (256, 256), mode="bilinear", align_corners=False)
    expected = torch.nn.functional.interpolate(padded, (256, 256), mode="bilinear", align_corners=False)[0]
    assert_close(upsample(low).numpy(), expected.numpy(), "direct upsampling, identity second resize")


def test_direct_upsampler_in_bands_of_a_few_rows_gives_the_same_logits(monkeypatch):
    from samkit import transforms

    low = torch.randn(3, 64, 64) * 4
    upsample = transforms.MaskUpsampler(64, 256, (192, 256), (150, 200), torch.device("cpu"))
    whole = upsample(low)
    monkeypatch.setattr(transforms, "_BAND_ELEMENTS", 7 * 3 * 200)
    np.testing.assert_array_equal(upsample(low).numpy(), whole.numpy())
    rows, cols, window = upsample.window(low, -1.0)
    np.testing.assert_array_equal(window.numpy(), whole[:, rows, cols].numpy())


@pytest.mark.parametrize("case", list(CASES))
def test_predict_window_gives_the_masks_of_predict_at_every_cut(pair, case):
    ours, _ = pair
    logits, scores, low = ours.predict(**CASES[case], return_logits=True)
    (rows, cols), inside, window_scores, window_low = ours.predict_window(**CASES[case], floor=-1.0)
    np.testing.assert_array_equal(window_scores, scores)
    np.testing.assert_array_equal(window_low, low)
    np.testing.assert_allclose(inside, logits[:, rows, cols], atol=1e-4)
    outside = logits.copy()
    outside[:, rows, cols] = -np.inf
    assert (outside < -1.0).all()
    for cut in (-1.0, 0.0, 1.0):
        full = (logits > cut).sum(axis=(1, 2))
        np.testing.assert_array_equal((inside > cut).sum(axis=(1, 2)), full)


def test_predict_window_of_a_small_object_is_small(pair):
    ours, _ = pair
    low = torch.full((1, 64, 64), -20.0)
    low[0, 30:33, 20:22] = 5.0
    rows, cols, inside = ours._upsample.window(low, -1.0)
    assert 0 < rows.stop - rows.start < 40 and 0 < cols.stop - cols.start < 40
    assert (inside > 0).any()
    assert ours._upsample.window(torch.full((1, 64, 64), -5.0), -1.0)[2].numel() == 0
