"""``samkit.propagate``: following objects through a stack.

Most tests use a stand-in predictor that answers from a known 3D ground truth using only the
prompt's geometry: on slice z it returns the connected parts of the true objects that the positive
points fall on (else the part with most pixels inside the box), as a good model would.
"""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage

import samkit
from samkit import Cancelled, FormatError, ParameterError, Predictor, PromptError, SamkitError, volume_cli
from samkit.propagate import (
    DEFAULT_IOU_THRESHOLD,
    DEFAULT_MIN_AREA,
    SlicePrompt,
    prompt_from_mask,
    propagate,
    propagate_result,
    seeds_from_prompts,
)
from samkit.volume import VolumeEmbeddings

LOW_RES = 256


class TruthPredictor:
    """Answers prompts on one slice of a ground-truth label volume."""

    def __init__(self, stack: TruthStack, z: int) -> None:
        self.stack, self.z = stack, z
        plane = stack.truth[z]
        self.original_size = plane.shape
        self.parts = np.zeros(plane.shape, dtype=np.int64)
        self.part_label = [0]
        for value in np.unique(plane[plane > 0]):
            found, n = ndimage.label(plane == value)
            self.parts[found > 0] = found[found > 0] + len(self.part_label) - 1
            self.part_label += [int(value)] * n

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True):
        self.stack.calls.append(
            {"z": self.z, "points": point_coords, "labels": point_labels, "box": box, "mask_input": mask_input}
        )
        chosen: set[int] = set()
        points = np.zeros((0, 2)) if point_coords is None else point_coords
        for (x, y), label in zip(points, [] if point_labels is None else point_labels):
            part = self.parts[round(y), round(x)]
            if label == 1 and part:
                chosen.add(int(part))
        if not chosen and box is not None:
            x0, y0, x1, y1 = (round(v) for v in box)
            inside = np.bincount(self.parts[y0 : y1 + 1, x0 : x1 + 1].ravel(), minlength=len(self.part_label))
            inside[0] = 0
            if inside.any():
                chosen.add(int(np.argmax(inside)))
        mask = np.isin(self.parts, sorted(chosen))
        if self.stack.grow:
            mask = ndimage.binary_dilation(mask, iterations=self.stack.grow)
        labels = {self.part_label[p] for p in chosen}
        score = max([self.stack.scores.get(v, 0.9) for v in labels], default=0.1)
        n = 3 if multimask_output else 1
        masks = np.repeat(mask[None], n, axis=0)
        scores = np.full(n, score, dtype=np.float32)
        low_res = np.full((n, LOW_RES, LOW_RES), float(self.z), dtype=np.float32)  # tags its slice
        return masks, scores, low_res


class TruthStack:
    """A ``SliceSource`` over a ground-truth label volume; records every prompt."""

    def __init__(self, truth: np.ndarray, grow: int = 0, scores: dict[int, float] | None = None) -> None:
        self.truth = truth
        self.shape = truth.shape
        self.grow = grow
        self.scores = scores or {}
        self.calls: list[dict] = []
        self.slices_used: list[int] = []

    def use_slice(self, z: int, progress=None) -> TruthPredictor:
        self.slices_used.append(z)
        if progress is not None:
            progress(0, 1)
        return TruthPredictor(self, z)


def ellipsoid(shape=(25, 64, 64), centre=(12, 32, 32), radii=(10, 20, 20)) -> np.ndarray:
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), centre, radii)) <= 1
    return inside.astype(np.int32)


def expected_run(truth: np.ndarray, start: int, step: int, obj: int = 1) -> list[int]:
    """Slices a perfect model reaches from ``start``: it stops where the truth vanishes or jumps."""
    reached, previous = [], truth[start] == obj
    z = start + step
    while 0 <= z < len(truth):
        current = truth[z] == obj
        union = (current | previous).sum()
        if current.sum() < DEFAULT_MIN_AREA or (current & previous).sum() / union < DEFAULT_IOU_THRESHOLD:
            break
        reached.append(z)
        previous, z = current, z + step
    return reached


def test_one_middle_slice_recovers_the_whole_ellipsoid_and_stops_at_its_ends():
    truth = ellipsoid()
    source = TruthStack(truth)
    result = propagate_result(source, {1: {12: truth[12]}})
    labels = result.labels
    assert labels.shape == truth.shape and labels.dtype == np.int32
    reached = sorted([12, *expected_run(truth, 12, 1), *expected_run(truth, 12, -1)])
    assert reached == list(range(3, 22))  # all but the one-voxel tips (slices 2 and 22)
    for z in range(len(truth)):
        assert np.array_equal(labels[z], truth[z] if z in reached else np.zeros_like(truth[z])), z
    assert (labels > 0).sum() >= 0.99 * truth.sum()
    assert not labels[:2].any() and not labels[23:].any()  # nothing beyond the object
    # It never asked beyond the first slice past each tip.
    assert min(source.slices_used) == 2 and max(source.slices_used) == 22
    assert [(s.direction, s.last, s.reason) for s in result.stops] == [(1, 21, "vanished"), (-1, 3, "vanished")]
    assert set(result.slices[1]) == set(reached)
    assert all(info.source == 12 for info in result.slices[1].values())
    assert result.slices[1][12].score == 1.0 and 0.5 < result.slices[1][13].iou_previous < 1


def test_prompts_come_from_the_previous_slice():
    truth = ellipsoid()
    source = TruthStack(truth)
    propagate(source, {1: {12: truth[12]}})
    up = [c for c in source.calls if c["z"] > 12]
    assert [c["z"] for c in up] == list(range(13, 23))
    first, second = up[0], up[1]
    assert first["mask_input"] is None  # no logits yet on the first step
    assert np.all(second["mask_input"] == 13)  # the low-res logits of slice 13 prompt slice 14
    rows, cols = np.nonzero(truth[13])
    x0, y0, x1, y1 = second["box"]
    assert x0 < cols.min() and y0 < rows.min() and x1 > cols.max() and y1 > rows.max()  # enlarged box
    (x, y), = second["points"]
    assert truth[13][int(y), int(x)] and (x, y) == (32, 32)  # the deepest point of slice 13's mask


def test_prompt_from_mask():
    mask = np.zeros((40, 50), bool)
    mask[5:15, 5:25] = True  # the larger part
    mask[25:31, 30:36] = True
    mask[0, 49] = True  # a speck: below min_area, no point
    prompt = prompt_from_mask(mask, np.ones((LOW_RES, LOW_RES)), min_area=10)
    assert prompt["box"] == pytest.approx([5 - 4.5, 0.0, 49.0, 30 + 3.1])  # 10% of 45 x 31 on each side
    assert prompt["point_labels"].tolist() == [1, 1]
    for x, y in prompt["point_coords"]:
        assert mask[int(y), int(x)]
    assert prompt["point_coords"][0][1] in (9, 10)
    assert prompt["mask_input"].shape == (1, LOW_RES, LOW_RES) and prompt["multimask_output"] is False
    only_point = prompt_from_mask(mask[:20, :30], use_box=False)
    assert "box" not in only_point and only_point["multimask_output"] is True
    with pytest.raises(ParameterError, match="points or a box"):
        prompt_from_mask(mask, use_points=False, use_box=False)


def test_gap_between_two_annotated_slices_is_filled_from_both_ends():
    truth = ellipsoid()
    source = TruthStack(truth)
    result = propagate_result(source, {1: {6: truth[6], 18: truth[18]}})
    assert np.array_equal(result.labels[3:22], truth[3:22])
    sources = {z: info.source for z, info in result.slices[1].items()}
    assert all(sources[z] == 6 for z in range(3, 13))  # slice 12 is a tie: the lower annotated slice
    assert all(sources[z] == 18 for z in range(13, 22))
    reasons = {(s.start, s.direction): s.reason for s in result.stops}
    assert reasons == {(6, 1): "annotated", (6, -1): "vanished", (18, 1): "vanished", (18, -1): "annotated"}


def test_gap_takes_the_farther_run_where_the_nearer_one_stopped():
    # A column whose cross-section jumps at slice 8: the run up from slice 4 stops there, the run
    # down from slice 20 carries on to slice 8, and fills slices 8 to 11 although they are nearer 4.
    zz, yy, xx = np.ogrid[:24, :64, :64]
    radius = np.where(zz < 8, 6, 14)
    truth = (((yy - 32) ** 2 + (xx - 32) ** 2) <= radius**2).astype(np.int32) * np.ones((24, 1, 1), np.int32)
    result = propagate_result(TruthStack(truth), truth, annotated_slices=[4, 20])
    assert np.array_equal(result.labels, truth)
    sources = {z: info.source for z, info in result.slices[1].items()}
    assert [sources[z] for z in range(5, 12)] == [4, 4, 4, 20, 20, 20, 20]
    stops = {(s.start, s.direction): s for s in result.stops}
    assert stops[(4, 1)].reason == "iou" and stops[(4, 1)].last == 7
    assert stops[(4, 1)].value == pytest.approx((truth[7] > 0).sum() / (truth[8] > 0).sum())
    assert stops[(20, -1)].reason == "iou" and stops[(20, -1)].last == 8
    assert str(stops[(4, 1)]) == "object 1, up from slice 4: stopped at slice 7: IoU 0.18 with slice 8 is below the threshold"


def test_stops_when_the_object_changes_abruptly():
    zz, yy, xx = np.ogrid[:20, :80, :80]
    radius = np.where(zz < 10, 8, 24)  # from slice 10 on, the object becomes three times as wide
    truth = (((yy - 40) ** 2 + (xx - 40) ** 2) <= radius**2).astype(np.int32) * np.ones((20, 1, 1), np.int32)
    result = propagate_result(TruthStack(truth), {1: {4: truth[4]}})
    assert np.array_equal(result.labels[:10], truth[:10])
    assert not result.labels[10:].any()
    up = next(s for s in result.stops if s.direction == 1)
    assert (up.reason, up.last) == ("iou", 9) and up.value < DEFAULT_IOU_THRESHOLD
    # A lower threshold lets it through.
    assert np.array_equal(propagate(TruthStack(truth), {1: {4: truth[4]}}, iou_threshold=0.05), truth)


def test_two_touching_objects_in_one_run():
    zz, yy, xx = np.ogrid[:16, :48, :64]
    along = (zz >= 2) & (zz <= 13)
    one = along & (((yy - 24) ** 2 + (xx - 22) ** 2) <= 100)
    two = along & (((yy - 24) ** 2 + (xx - 42) ** 2) <= 100) & ~one
    truth = one.astype(np.int32) + 2 * two.astype(np.int32)
    assert (ndimage.binary_dilation(one[8]) & two[8]).any()  # they touch
    # The stand-in's masks spill one pixel over the true boundary, and it is surer of object 2.
    source = TruthStack(truth, grow=1, scores={1: 0.8, 2: 0.95})
    result = propagate_result(source, {1: {8: truth[8] == 1}, 2: {9: truth[9] == 2}})
    labels = result.labels
    assert np.array_equal(labels[8] == 1, one[8]) and np.array_equal(labels[9] == 2, two[9])  # annotations kept
    for z in range(2, 14):
        one_z = ndimage.binary_dilation(one[z])
        two_z = ndimage.binary_dilation(two[z])
        assert ((labels[z] == 1) <= one_z).all() and ((labels[z] == 2) <= two_z).all()
        assert (labels[z][one[z] | two[z]] > 0).all()
        if z not in (8, 9):
            # Where both spill onto the other, the surer object 2 wins.
            assert (labels[z][one[z] & two_z] == 2).all()
    # On slice 8, object 2's spill never overwrites object 1's annotated mask; it only adds pixels outside it.
    assert (labels[8][one[8]] == 1).all() and (labels[8][two[8]] == 2).all()
    assert not labels[:2].any() and not labels[14:].any()
    assert result.slices[2][8].source == 9 and result.slices[1][9].source == 8


def test_a_disc_moving_through_time():
    frames, radius = 20, 8
    tt, yy, xx = np.ogrid[:frames, :40, :96]
    truth = (((yy - 20) ** 2 + (xx - (10 + 4 * tt)) ** 2) <= radius**2).astype(np.int32)
    labels = propagate(TruthStack(truth), {1: {10: truth[10]}})
    assert np.array_equal(labels, truth)


def test_a_list_of_predictors_one_per_slice():
    truth = ellipsoid()
    stack = TruthStack(truth)
    predictors = [TruthPredictor(stack, z) for z in range(len(truth))]
    assert np.array_equal(propagate(predictors, {1: {12: truth[12]}}), propagate(TruthStack(truth), {1: {12: truth[12]}}))
    with pytest.raises(ParameterError, match="one per slice"):
        propagate(object(), {1: {12: truth[12]}})


def test_labels_seeds_and_annotated_slices():
    truth = ellipsoid()
    seeds = np.zeros_like(truth)
    seeds[12] = truth[12] * 5
    labels = propagate(TruthStack(truth * 5), seeds)
    assert set(np.unique(labels)) == {0, 5} and (labels > 0).sum() >= 0.99 * truth.sum()
    # With every slice of the truth as seeds, all its slices are annotated: only the slices beyond are tried.
    source = TruthStack(truth)
    assert np.array_equal(propagate(source, truth), truth)
    assert sorted(c["z"] for c in source.calls) == [1, 23]


def test_progress_and_cancel():
    truth = ellipsoid()
    ticks = []
    propagate(TruthStack(truth), {1: {12: truth[12]}}, progress=lambda d, t: ticks.append((d, t)))
    assert ticks[0] == (0, 50) and ticks[-1] == (50, 50)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(ticks))
    source = TruthStack(truth)
    with pytest.raises(Cancelled):
        propagate(source, {1: {12: truth[12]}}, cancel=lambda: len(source.calls) >= 3)
    assert len(source.calls) == 3


def test_bad_seeds_and_settings():
    truth = ellipsoid()
    source = TruthStack(truth)
    with pytest.raises(PromptError, match="Slice 30 is outside the stack: it has 25 slices"):
        propagate(source, {1: {30: truth[12]}})
    with pytest.raises(PromptError, match="Slice 30 is outside"):
        propagate(source, truth, annotated_slices=[12, 30])
    with pytest.raises(PromptError, match="empty mask on slice 3"):
        propagate(source, {1: {3: np.zeros((64, 64))}})
    with pytest.raises(PromptError, match="shape"):
        propagate(source, {1: {12: truth[12][:10]}})
    with pytest.raises(PromptError, match="No object"):
        propagate(source, np.zeros_like(truth))
    with pytest.raises(PromptError, match="No object"):
        propagate(source, {})
    with pytest.raises(PromptError, match="Objects 1 and 2 overlap on slice 12"):
        propagate(source, {1: {12: truth[12]}, 2: {12: truth[12]}})
    with pytest.raises(PromptError, match="Object ids"):
        propagate(source, {0: {12: truth[12]}})
    with pytest.raises(ParameterError, match="iou_threshold"):
        propagate(source, {1: {12: truth[12]}}, iou_threshold=1.5)
    with pytest.raises(ParameterError, match="min_area"):
        propagate(source, {1: {12: truth[12]}}, min_area=-1)
    with pytest.raises(ParameterError, match="points or a box"):
        propagate(source, {1: {12: truth[12]}}, use_points=False, use_box=False)
    with pytest.raises(ParameterError, match="annotated_slices"):
        propagate(source, {1: {12: truth[12]}}, annotated_slices=[12])
    assert not source.calls


def test_seeds_from_prompts():
    truth = ellipsoid()
    source = TruthStack(truth)
    seeds = seeds_from_prompts(
        source,
        [SlicePrompt(1, 12, points=np.array([[32, 32]])), SlicePrompt(1, 18, box=np.array([20, 20, 44, 44]))],
    )
    assert np.array_equal(seeds[1][12], truth[12] > 0) and np.array_equal(seeds[1][18], truth[18] > 0)
    assert source.calls[0]["box"] is not None or source.calls[1]["box"] is not None
    with pytest.raises(PromptError, match="Slice 25"):
        seeds_from_prompts(source, [SlicePrompt(1, 25, points=np.array([[1, 1]]))])
    with pytest.raises(PromptError, match="empty mask"):
        seeds_from_prompts(source, [SlicePrompt(1, 0, points=np.array([[1, 1]]))])
    with pytest.raises(PromptError, match="two prompts on slice 12"):
        seeds_from_prompts(source, [SlicePrompt(1, 12, points=np.array([[32, 32]]))] * 2)


def test_real_model_end_to_end(tiny_checkpoint):
    model = samkit.load_model(tiny_checkpoint, device="cpu")
    _, yy, xx = np.mgrid[0:5, 0:64, 0:64]
    blob = ((yy - 32) ** 2 + (xx - 30) ** 2) < 14**2
    stack = (100 + 900 * blob + np.random.default_rng(0).normal(0, 10, blob.shape)).astype(np.float32)
    with VolumeEmbeddings(Predictor(model, precision="fp32"), stack) as volume:
        result = propagate_result(volume, {3: {2: blob[2]}}, iou_threshold=0.0, min_area=0)
        assert volume.computed[[1, 3]].all() and not volume.computed[2]  # the seed's slice is not needed
    labels = result.labels
    assert labels.shape == (5, 64, 64) and labels.dtype == np.int32
    assert np.array_equal(labels[2], blob[2] * 3)
    assert set(np.unique(labels)) <= {0, 3}
    assert {s.reason for s in result.stops} <= {"end", "vanished"}


def _volume_parser() -> argparse.ArgumentParser:
    """The ``volume`` command as the main parser wires it: model options, then the command's own."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="sam_vit_b")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--no-cache", action="store_true")
    volume_cli.add_arguments(parser)
    return parser


def test_volume_command_end_to_end(tiny_checkpoint, tmp_path):
    _, yy, xx = np.mgrid[0:5, 0:64, 0:64]
    blob = ((yy - 32) ** 2 + (xx - 30) ** 2) < 14**2
    tifffile.imwrite(tmp_path / "stack.tif", (300 + 3000 * blob).astype(np.uint16))
    prompts = {"objects": [{"id": 7, "slice": 2, "box": [10, 10, 54, 54]}, {"id": 7, "slice": 4, "points": [[30, 32]]}]}
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    args = _volume_parser().parse_args(
        [str(tmp_path / "stack.tif"), "--prompts", str(tmp_path / "prompts.json"), "-o", str(tmp_path / "labels.tif"),
         "--model", str(tiny_checkpoint), "--device", "cpu", "--precision", "fp32", "--no-cache", "--min-area", "0"]
    )
    lines = []
    volume_cli.run_from_args(args, out=lines.append)
    labels = tifffile.imread(tmp_path / "labels.tif")
    assert labels.shape == (5, 64, 64) and labels.dtype == np.int32
    assert set(np.unique(labels)) <= {0, 7} and labels[2].any() and labels[4].any()
    assert lines[0].startswith("object 7: ") and lines[-1] == f"wrote {tmp_path / 'labels.tif'}"
    assert not list(tmp_path.glob(".*tmp*"))


def test_prompts_file_errors(tmp_path):
    good = {"id": 1, "slice": 0, "points": [[1, 2]]}
    prompts = volume_cli.parse_prompts({"objects": [good, {"id": 2, "slice": 3, "points": [[1, 2], [3, 4]],
                                                           "labels": [1, 0], "box": [0, 0, 9, 9]}]})
    assert prompts[0].labels.tolist() == [1] and prompts[1].labels.tolist() == [1, 0]
    assert prompts[1].box.tolist() == [0, 0, 9, 9] and prompts[1].slice == 3
    bad = [
        ([], "expected"),
        ({"objects": [{"slice": 0, "points": [[1, 2]]}]}, "'id' must be an integer"),
        ({"objects": [{**good, "slice": 1.5}]}, "'slice' must be an integer"),
        ({"objects": [{"id": 1, "slice": 0}]}, "points, a box or both"),
        ({"objects": [{**good, "points": [1, 2]}]}, r"objects\[0\]: points must be a list of \[x, y\]"),
        ({"objects": [{**good, "labels": [1, 1]}]}, "one 1 or 0 per point"),
        ({"objects": [{**good, "labels": [2]}]}, "labels must be 1"),
        ({"objects": [{**good, "box": [0, 0, 1]}]}, "box must be"),
        ({"objects": [{**good, "point": [[1, 2]]}]}, "unknown keys"),
    ]
    for data, message in bad:
        with pytest.raises(FormatError, match=message):
            volume_cli.parse_prompts(data)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(FormatError, match="Cannot read"):
        volume_cli.read_prompts(tmp_path / "broken.json")
    with pytest.raises(SamkitError, match="does not exist"):
        volume_cli.run_volume(tmp_path / "stack.tif", tmp_path / "broken.json", tmp_path / "no" / "labels.tif")
