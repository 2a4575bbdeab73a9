"""Simulated interactive prompting, instance metrics and the ``samkit evaluate`` command."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
from scipy import ndimage
from skimage import io

import samkit
from samkit import Cancelled, ParameterError, SamkitError, synthetic
from samkit.cli import main
from samkit.evaluate import (
    InteractiveResult,
    box_iou_of,
    evaluate_automatic,
    evaluate_instances,
    evaluate_interactive,
    first_point,
    instance_metrics,
    interactive_ious,
    match_instances,
    next_point,
    pair_files,
)

FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])


class TruthPredictor:
    """Answers prompts from a known label image, by rules simple enough to follow by hand.

    Points: the foreground minus a square of half-size 5 around each negative point, then the
    4-connected components that hold a positive point. One click with ``multimask_output``
    gives three candidates: a 5 x 5 square at the click, the whole foreground, and the
    component rule, with predicted IoUs 0.3, 0.5 and 0.8. A box gives the foreground inside it.
    Low-res logits are constants 100 * call + candidate, so the mask input can be traced.
    """

    def __init__(self, labels: np.ndarray) -> None:
        self.foreground = labels > 0
        self.calls: list[dict] = []
        self.images_set = 0

    def set_image(self, image: np.ndarray) -> None:
        self.images_set += 1

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True):
        self.calls.append({"points": None if point_coords is None else np.array(point_coords),
                           "labels": None if point_labels is None else np.array(point_labels),
                           "box": box, "mask_input": mask_input, "multimask": multimask_output})
        if box is not None:
            x0, y0, x1, y1 = np.asarray(box, dtype=int)
            masks = [np.zeros_like(self.foreground)]
            masks[0][y0:y1 + 1, x0:x1 + 1] = self.foreground[y0:y1 + 1, x0:x1 + 1]
            scores = [0.95]
        else:
            kept = self.foreground.copy()
            for (x, y), label in zip(point_coords.astype(int), point_labels):
                if label == 0:
                    kept[max(y - 5, 0):y + 6, max(x - 5, 0):x + 6] = False
            regions, _ = ndimage.label(kept, structure=FOUR)
            hit = {regions[y, x] for (x, y), label in zip(point_coords.astype(int), point_labels) if label == 1}
            component = np.isin(regions, list(hit - {0}))
            if multimask_output:
                x, y = point_coords[0].astype(int)
                small = np.zeros_like(self.foreground)
                small[y - 2:y + 3, x - 2:x + 3] = True
                masks, scores = [small & self.foreground, self.foreground, component], [0.3, 0.5, 0.8]
            else:
                masks, scores = [component], [0.9]
        call = len(self.calls) - 1
        low_res = np.stack([np.full((256, 256), 100.0 * call + c, dtype=np.float32) for c in range(len(masks))])
        return np.stack(masks), np.array(scores), low_res


def scene() -> np.ndarray:
    """A (1) and B (2) side by side, D (3) two squares meeting at a corner, E (4) in D's box, F (5) of 3 px."""
    labels = np.zeros((48, 60), dtype=np.int32)
    labels[10:21, 10:31] = 1  # 11 x 21 = 231 px
    labels[10:21, 31:42] = 2  # 11 x 11 = 121 px, touching A
    labels[25:36, 5:16] = 3  # 11 x 11 = 121 px
    labels[36:43, 16:23] = 3  # 7 x 7 = 49 px, meets the first square only diagonally
    labels[38:43, 5:10] = 4  # 5 x 5 = 25 px, inside D's bounding box
    labels[45, 50:53] = 5  # 3 px: too small
    return labels


EXPECTED = {  # object id: (IoU after 1..5 clicks, box IoU), worked out by hand in the test below
    1: ([231 / 352, 1, 1, 1, 1], 1.0),
    2: ([121 / 352, 121 / 176, 88 / 121, 88 / 121, 88 / 121], 1.0),
    3: ([121 / 170, 1, 1, 1, 1], 170 / 195),
    4: ([1, 1, 1, 1, 1], 1.0),
}


# ---------------------------------------------------------------------------------------------
# Clicks


def test_first_point_rectangle_centre_with_deterministic_tie():
    mask = np.zeros((20, 30), dtype=bool)
    mask[3:13, 5:25] = True  # 10 x 20: the farthest pixels are rows 7-8, columns 9-20 (distance 5)
    assert first_point(mask) == (14, 7)  # nearest the middle of that plateau, first row-major
    mask = np.zeros((20, 30), dtype=bool)
    mask[3:14, 5:26] = True  # 11 x 21: one centre
    assert first_point(mask) == (15, 8)


def test_first_point_counts_the_image_border_as_boundary():
    mask = np.zeros((20, 20), dtype=bool)
    mask[:10, :10] = True
    assert first_point(mask) == (4, 4)  # not the corner (0, 0), farthest from the object's inner edges


def brute_force_distance(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1)
    outside = np.argwhere(~padded) - 1
    inside = np.argwhere(mask)
    distance = np.zeros(mask.shape)
    for r, c in inside:
        distance[r, c] = np.sqrt(((outside - (r, c)) ** 2).sum(1).min())
    return distance


def test_first_point_l_shape_is_farthest_from_boundary():
    mask = np.zeros((40, 40), dtype=bool)
    mask[2:32, 2:12] = True  # vertical arm, 10 wide
    mask[20:32, 2:34] = True  # horizontal arm, 12 thick
    x, y = first_point(mask)
    distance = brute_force_distance(mask)
    assert mask[y, x]
    assert distance[y, x] == distance.max()
    rows, cols = np.nonzero(distance == distance.max())
    order = np.lexsort((np.arange(len(rows)), (rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
    assert (x, y) == (cols[order[0]], rows[order[0]])
    assert distance.max() > 5  # in the corner where the arms meet, deeper than the thin arm allows


def test_next_point_largest_error_region_with_its_sign():
    truth = np.zeros((40, 40), dtype=bool)
    truth[5:25, 5:25] = True
    predicted = truth.copy()
    predicted[5:11, 5:11] = False  # 36 missed pixels
    predicted[30:34, 30:34] = True  # 16 spurious pixels
    predicted[20:22, 20:22] = False  # 4 more missed pixels, a separate region
    assert next_point(predicted, truth) == ((7, 7), 1)
    predicted = truth.copy()
    predicted[12:15, 12:15] = False  # 9 missed
    predicted[27:35, 28:36] = True  # 64 spurious
    assert next_point(predicted, truth) == ((31, 30), 0)
    tie = truth.copy()
    tie[5:9, 5:9] = False
    tie[30:34, 30:34] = True
    assert next_point(tie, truth)[1] == 1  # equally large: the missed part first
    assert next_point(truth, truth) is None
    diagonal = truth.copy()
    diagonal[5:8, 5:8] = diagonal[8:11, 8:11] = False  # one 8-connected region of 18 missed pixels
    diagonal[30:34, 30:34] = True  # 16 spurious pixels
    assert next_point(diagonal, truth)[1] == 1
    with pytest.raises(ParameterError, match="shape"):
        next_point(truth[:10], truth)


# ---------------------------------------------------------------------------------------------
# Interactive evaluation


def test_interactive_ious_follow_the_protocol_by_hand():
    # A: click 1 at A's centre (20, 15) gives A and B (4-connected) -> 231/352. Click 2 is
    # negative at B's centre (36, 15), whose square removes B exactly -> A, IoU 1; no error is
    # left, so the IoU stays 1.
    # B: click 1 at (36, 15) -> 121/352. Click 2 negative at A's centre (20, 15) removes A's
    # columns 15-25: B plus A's columns 26-30 (55 px) -> 121/176. Click 3 negative at the centre
    # of that strip (28, 15) removes columns 23-33, taking B's columns 31-33 too -> 88/121.
    # Click 4 is positive in those 33 missed pixels (32, 15), but inside the removed square, so
    # nothing changes, and click 5 repeats it.
    labels = scene()
    for index, (ious, box) in EXPECTED.items():
        predictor = TruthPredictor(labels)
        np.testing.assert_allclose(interactive_ious(predictor, labels == index, n_points=5), ious)
        assert box_iou_of(predictor, labels == index) == pytest.approx(box)
    predictor = TruthPredictor(labels)
    interactive_ious(predictor, labels == 2, n_points=5)
    first, *later = predictor.calls
    assert first["multimask"] and first["mask_input"] is None
    np.testing.assert_array_equal(first["points"], [[36, 15]])
    for step, call in enumerate(later, start=1):
        assert not call["multimask"]
        previous = 2 if step == 1 else 0  # the best-scored candidate of the first call, then the single mask
        np.testing.assert_array_equal(call["mask_input"], np.full((1, 256, 256), 100.0 * (step - 1) + previous))
    np.testing.assert_array_equal(later[-1]["points"], [[36, 15], [20, 15], [28, 15], [32, 15], [32, 15]])
    np.testing.assert_array_equal(later[-1]["labels"], [1, 0, 0, 1, 1])


def test_box_is_the_tight_inclusive_box():
    labels = scene()
    predictor = TruthPredictor(labels)
    box_iou_of(predictor, labels == 3)
    np.testing.assert_array_equal(predictor.calls[0]["box"], [5, 25, 22, 42])
    assert predictor.calls[0]["multimask"] is False


def test_evaluate_interactive_table_and_summary():
    labels = scene()
    image = np.zeros(labels.shape, dtype=np.uint8)
    seen = []
    result = evaluate_interactive(TruthPredictor(labels), image, labels, progress=lambda d, t: seen.append((d, t)))
    np.testing.assert_array_equal(result.object_id, [1, 2, 3, 4])
    np.testing.assert_array_equal(result.image, [0, 0, 0, 0])
    np.testing.assert_array_equal(result.area, [231, 121, 170, 25])
    np.testing.assert_allclose(result.ious, [EXPECTED[i][0] for i in range(1, 5)])
    np.testing.assert_allclose(result.box_iou, [EXPECTED[i][1] for i in range(1, 5)])
    assert result.skipped == 1  # F, 3 pixels
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    summary = result.summary()
    assert summary["objects"] == 4 and summary["skipped"] == 1
    assert summary["miou_1"] == pytest.approx((231 / 352 + 121 / 352 + 121 / 170 + 1) / 4)
    assert summary["miou_3"] == pytest.approx((1 + 88 / 121 + 1 + 1) / 4)
    assert summary["miou_5"] == pytest.approx((1 + 88 / 121 + 1 + 1) / 4)
    assert summary["miou_box"] == pytest.approx((3 + 170 / 195) / 4)
    assert result.miou(2) == pytest.approx((1 + 121 / 176 + 1 + 1) / 4)
    with pytest.raises(ParameterError, match="1 to 5"):
        result.miou(6)
    no_box = evaluate_interactive(TruthPredictor(labels), image, labels, n_points=2, boxes=False)
    assert np.isnan(no_box.miou_box) and "miou_3" not in no_box.summary()


def test_shapes_must_match():
    with pytest.raises(ParameterError, match=r"\(40, 30\).*\(30, 40\)"):
        evaluate_interactive(TruthPredictor(np.zeros((40, 30))), np.zeros((30, 40)), np.zeros((40, 30), int))
    with pytest.raises(ParameterError, match="2 images but 1"):
        evaluate_interactive(TruthPredictor(scene()), [np.zeros((48, 60))] * 2, [scene()])
    with pytest.raises(ParameterError, match=r"\(4, 4\).*\(4, 5\)"):
        match_instances(np.zeros((4, 4), int), np.zeros((4, 5), int))
    # Channels first or last both give the image's height and width.
    result = evaluate_interactive(TruthPredictor(scene()), np.zeros((3, 48, 60)), scene(), n_points=1)
    assert len(result) == 4


def test_image_without_objects_warns_and_is_skipped():
    labels = scene()
    predictor = TruthPredictor(labels)
    empty = np.zeros_like(labels)
    with pytest.warns(UserWarning, match="Image 0 has no labelled object"):
        result = evaluate_interactive(predictor, [np.zeros((48, 60))] * 2, [empty, labels], n_points=2)
    assert predictor.images_set == 1
    assert set(result.image) == {1} and len(result) == 4
    with pytest.warns(UserWarning, match="no labelled object"):
        nothing = evaluate_interactive(predictor, np.zeros((48, 60)), empty, n_points=3)
    assert len(nothing) == 0 and nothing.ious.shape == (0, 3) and np.isnan(nothing.summary()["miou_1"])


def test_cancel_stops_between_objects():
    labels = scene()
    done = []
    with pytest.raises(Cancelled):
        evaluate_interactive(TruthPredictor(labels), np.zeros((48, 60)), labels, n_points=1,
                             progress=lambda d, t: done.append(d), cancel=lambda: len(done) >= 2)
    assert done == [1, 2]


def test_csv_round_trip(tmp_path):
    labels = scene()
    result = evaluate_interactive(TruthPredictor(labels), [np.zeros((48, 60))] * 2, [labels, labels], n_points=3,
                                  names=["one.tif", "two.tif"])
    path = result.to_csv(tmp_path / "results.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["image", "file", "object", "area", "iou_1", "iou_2", "iou_3", "box_iou"]
    assert [row["file"] for row in rows] == ["one.tif"] * 4 + ["two.tif"] * 4
    assert float(rows[1]["iou_1"]) == 121 / 352
    back = InteractiveResult.read_csv(path)
    for name in ("image", "object_id", "area", "ious", "box_iou"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
    assert back.names == ["one.tif", "two.tif"]
    plain = evaluate_interactive(TruthPredictor(labels), np.zeros((48, 60)), labels, n_points=1, boxes=False)
    back = InteractiveResult.read_csv(plain.to_csv(tmp_path / "plain.csv"))
    np.testing.assert_array_equal(back.ious, plain.ious)
    assert np.isnan(back.box_iou).all() and back.names is None


# ---------------------------------------------------------------------------------------------
# Instance metrics


def squares(*corners, size=10, shape=(60, 60)) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.int32)
    for index, (r, c) in enumerate(corners, start=1):
        labels[r:r + size, c:c + size] = index
    return labels


def test_perfect_prediction_scores_one():
    truth = squares((0, 0), (20, 20), (40, 5))
    predicted = np.choose(truth, [0, 7, 3, 9])  # other ids, same objects
    metrics = instance_metrics(truth, predicted)
    assert (metrics["tp"], metrics["fp"], metrics["fn"]) == (3, 0, 0)
    for key in ("precision", "recall", "f1", "ap50", "ap75", "mean_accuracy"):
        assert metrics[key] == 1.0
    assert instance_metrics(np.zeros((5, 5), int), np.zeros((5, 5), int))["mean_accuracy"] == 1.0


def test_one_missed_object():
    truth = squares((0, 0), (20, 20), (40, 5))
    metrics = instance_metrics(truth, np.where(truth == 3, 0, truth))
    assert (metrics["tp"], metrics["fp"], metrics["fn"]) == (2, 0, 1)
    assert metrics["precision"] == 1.0
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(0.8)
    assert metrics["ap50"] == pytest.approx(2 / 3)
    assert metrics["mean_accuracy"] == pytest.approx(2 / 3)


def test_one_split_object():
    truth = np.zeros((40, 40), dtype=np.int32)
    truth[0:10, 0:16] = 1  # 160 px, split 100 + 60 below: IoUs 0.625 and 0.375
    truth[20:30, 20:30] = 2
    predicted = truth.copy()
    predicted[0:10, 10:16] = 3
    metrics = instance_metrics(truth, predicted)
    assert (metrics["tp"], metrics["fp"], metrics["fn"]) == (2, 1, 0)
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == 1.0
    assert metrics["f1"] == pytest.approx(0.8)
    assert metrics["ap50"] == pytest.approx(2 / 3)
    assert metrics["ap75"] == pytest.approx(1 / 4)  # the larger piece no longer matches: TP 1, FP 2, FN 1
    assert metrics["mean_accuracy"] == pytest.approx((3 * 2 / 3 + 7 * 1 / 4) / 10)


def test_shifted_objects_between_thresholds():
    truth = squares((0, 0), (30, 30))
    predicted = np.zeros_like(truth)
    predicted[0:10, 1:11] = 1  # shifted by 1: IoU 9/11 = 0.818
    predicted[30:40, 32:42] = 2  # shifted by 2: IoU 8/12 = 0.667
    iou = match_instances(truth, predicted).iou
    np.testing.assert_allclose(iou, [[9 / 11, 0], [0, 8 / 12]])
    metrics = instance_metrics(truth, predicted)
    assert metrics["ap50"] == 1.0
    assert metrics["ap75"] == pytest.approx(1 / 3)
    # Both match at 0.5-0.65, one at 0.7-0.8, none at 0.85-0.95.
    assert metrics["mean_accuracy"] == pytest.approx((4 * 1 + 3 * 1 / 3 + 3 * 0) / 10)


def test_iou_matrix_equals_pairwise_masks():
    rng = np.random.default_rng(0)
    truth = ndimage.label(ndimage.gaussian_filter(rng.normal(size=(64, 64)), 2) > 0.05)[0]
    predicted = ndimage.label(ndimage.gaussian_filter(rng.normal(size=(64, 64)), 2) > 0.05)[0] * 3
    matching = match_instances(truth, predicted)
    for i, t in enumerate(matching.truth_ids):
        for j, p in enumerate(matching.predicted_ids):
            a, b = truth == t, predicted == p
            assert matching.iou[i, j] == pytest.approx((a & b).sum() / (a | b).sum())
    assert matching.tp == (matching.iou >= 0.5).sum()  # above 0.5 a match is unique


def test_matching_is_optimal_one_to_one():
    truth = np.zeros((1, 20), dtype=np.int32)
    truth[0, :10], truth[0, 10:] = 1, 2
    predicted = np.zeros_like(truth)
    predicted[0, :4], predicted[0, 4:14] = 1, 2  # IoU a-1 0.4, a-2 6/14, b-2 0.25
    loose = match_instances(truth, predicted, 0.25)
    assert sorted(map(tuple, loose.pairs.tolist())) == [(0, 0), (1, 1)]  # greedy a-2 would leave b alone
    strict = match_instances(truth, predicted, 0.3)
    assert strict.pairs.tolist() == [[0, 1]] and (strict.tp, strict.fp, strict.fn) == (1, 1, 1)
    truth = np.zeros((1, 30), dtype=np.int32)
    truth[0, :10], truth[0, 10:] = 1, 2
    predicted = np.zeros_like(truth)
    predicted[0, :2], predicted[0, 2:14] = 1, 2  # IoU a-1 0.2, a-2 8/14, b-2 4/28
    most = match_instances(truth, predicted, 0.14)
    assert most.tp == 2  # two matches (IoU sum 0.34) beat the single best pair (0.57)


def test_evaluate_instances_sums_counts_over_images():
    truth = squares((0, 0), (20, 20), (40, 5))
    metrics = evaluate_instances([truth[:30], truth], [truth[:30], np.where(truth == 3, 0, truth)])
    assert (metrics["tp"], metrics["fp"], metrics["fn"]) == (4, 0, 1)
    assert metrics["recall"] == pytest.approx(0.8)
    assert metrics["mean_accuracy"] == pytest.approx(0.8)  # summed, not the mean of 1 and 2/3


def test_evaluate_automatic_with_callables():
    truth = squares((0, 0), (20, 20), (40, 5))
    images = [np.zeros(truth.shape)] * 2
    shifted = np.roll(truth, 2, axis=1)
    metrics = evaluate_automatic(lambda image: shifted, images, [truth, truth])
    assert (metrics["tp"], metrics["fp"], metrics["fn"]) == (6, 0, 0)
    assert metrics["mean_accuracy"] == pytest.approx(0.4)
    records = [{"segmentation": truth == i} for i in (1, 2)]
    metrics = evaluate_automatic(lambda image: records, images[0], truth)
    assert (metrics["tp"], metrics["fp"], metrics["fn"]) == (2, 0, 1)


# ---------------------------------------------------------------------------------------------
# With the real model code


def test_end_to_end_with_a_tiny_model(tiny_checkpoint):
    model = samkit.load_model(tiny_checkpoint, device="cpu")
    image, labels = synthetic.nuclei((64, 64), n=3, seed=2)
    result = evaluate_interactive(samkit.Predictor(model, precision="fp32"), image, labels, n_points=2)
    assert len(result) == labels.max() >= 1
    assert np.all((result.ious >= 0) & (result.ious <= 1))
    assert np.all((result.box_iou >= 0) & (result.box_iou <= 1))
    generator = samkit.AutomaticMaskGenerator(model, points_per_side=2, pred_iou_thresh=0, stability_score_thresh=0,
                                              precision="fp32")
    metrics = evaluate_automatic(generator, image, labels)
    assert metrics["tp"] + metrics["fn"] == labels.max()
    assert 0 <= metrics["mean_accuracy"] <= 1


# ---------------------------------------------------------------------------------------------
# Files and the command line


@pytest.fixture
def labelled_files(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    nuclei, nuclei_labels = synthetic.nuclei((64, 64), n=2, seed=4)
    cells, cells_labels = synthetic.cells((64, 64), n=2, seed=4)
    tifffile.imwrite(images / "a.tif", nuclei)
    tifffile.imwrite(labels / "a.tif", nuclei_labels)
    io.imsave(images / "b.png", cells, check_contrast=False)
    tifffile.imwrite(labels / "b_labels.tif", cells_labels)
    return images, labels, int(nuclei_labels.max() + cells_labels.max())


def test_pair_files_by_stem(labelled_files, tmp_path):
    images, labels, _ = labelled_files
    pairs = pair_files([images], [labels])
    assert [(a.name, b.name) for a, b in pairs] == [("a.tif", "a.tif"), ("b.png", "b_labels.tif")]
    (labels / "b_labels.tif").rename(labels / "c.tif")
    with pytest.raises(SamkitError, match=r"without a label file: .*b\.png.*label files without an image: .*c\.tif"):
        pair_files([images], [labels])


def test_cli_evaluate_writes_csv_and_prints_summary(tiny_checkpoint, labelled_files, tmp_path, capsys):
    images, labels, n_objects = labelled_files
    out = tmp_path / "results.csv"
    code = main(["evaluate", "--model", str(tiny_checkpoint), "--images", str(images), "--labels", str(labels),
                 "--points", "3", "-o", str(out), "--device", "cpu", "--precision", "fp32", "--no-cache"])
    assert code == 0
    printed = capsys.readouterr().out
    table = InteractiveResult.read_csv(out)
    assert len(table) == n_objects
    assert table.names == ["a.tif", "b.png"]
    assert f"mIoU, 1 point: {table.miou(1):.4f}" in printed
    assert f"mIoU, 3 points: {table.miou(3):.4f}" in printed
    assert f"mIoU, box: {table.miou_box:.4f}" in printed
    assert f"{n_objects} objects in 2 images" in printed


def test_cli_evaluate_automatic_and_missing_pairs(tiny_checkpoint, labelled_files, capsys):
    images, labels, _ = labelled_files
    code = main(["evaluate", "--model", str(tiny_checkpoint), "--images", str(images / "a.tif"),
                 "--labels", str(labels / "a.tif"), "--points", "1", "--no-box", "--automatic",
                 "--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
                 "--device", "cpu", "--precision", "fp32", "--no-cache"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "grid mode, IoU >= 0.5: TP" in printed and "mean accuracy over IoU 0.5:0.95" in printed
    assert "mIoU, box" not in printed
    code = main(["evaluate", "--model", str(tiny_checkpoint), "--images", str(images),
                 "--labels", str(labels / "a.tif"), "--no-cache"])
    assert code == 2
    assert "b.png" in capsys.readouterr().err
