"""Fine-tuning: data checks, prompt sampling, losses, learning, checkpoints, resume and atomic saves."""

from __future__ import annotations

import argparse
import csv
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
import torch
from helpers import official_sam, random_state_dict

import samkit
from samkit.checkpoint import model_from_state_dict
from samkit.errors import Cancelled, FormatError, ParameterError
from samkit.losses import dice_loss, focal_loss, mask_iou, sam_loss
from samkit.model import DecoderConfig, SamConfig, TinyViTConfig, ViTConfig
from samkit.train import STATE_FILE, _Run, add_arguments, run_from_args, train
from samkit.train_data import (
    Geometry,
    correction_points,
    dihedral,
    interior_points,
    jittered_boxes,
    load_training_data,
    object_targets,
    positive_points,
)

# Small enough for dozens of training steps in seconds: a 128 px ViT and a narrow decoder.
DECODER = DecoderConfig(embed_dim=64, mask_in_chans=16, mlp_dim=256, iou_head_hidden_dim=64)
MICRO_VIT = SamConfig(
    ViTConfig(img_size=128, embed_dim=32, depth=1, num_heads=2, out_chans=64, window_size=4, global_attn_indexes=(0,)),
    DECODER,
)
MICRO_TINY_VIT = SamConfig(
    TinyViTConfig(img_size=128, embed_dims=(16, 32, 40, 48), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 3),
                  out_chans=64, num_classes=0),
    DECODER,
)
FAST = {"precision": "fp32", "correction_rounds": 1, "patience": 10}


def ellipses(seed: int, objects: int = 1, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Bright non-overlapping ellipses on a dark noisy background, and their instance labels."""
    rng = np.random.default_rng(seed)
    image = rng.normal(20, 8, (size, size))
    labels = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    while labels.max() < objects:
        r = rng.uniform(14, 30)
        cy, cx = rng.uniform(r, size - r, 2)
        inside = ((yy - cy) / (r * rng.uniform(0.7, 1.3))) ** 2 + ((xx - cx) / (r * rng.uniform(0.7, 1.3))) ** 2 <= 1
        if labels[inside].any():
            continue
        labels[inside] = labels.max() + 1
        image[inside] += rng.uniform(120, 200)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def micro_model(config: SamConfig = MICRO_VIT, seed: int = 0) -> samkit.model.Sam:
    return model_from_state_dict(random_state_dict(config, seed))


def encoder_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith("image_encoder.")}


def decoder_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("image_encoder.")}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models here are tiny: one thread is as fast, and keeps steady on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def learned(one_thread, tmp_path_factory):
    """A decoder-mode run of 54 steps on 9 images, validated on 3 held-out images."""
    model = micro_model()
    before = (encoder_state(model), decoder_state(model))
    data = [ellipses(seed) for seed in range(12)]
    out = tmp_path_factory.mktemp("learned")
    result = train(model, data, out, epochs=6, lr=3e-3, val_fraction=0.25, correction_rounds=2, precision="fp32",
                   patience=10)
    return result, before


# ---- data ------------------------------------------------------------------------------------------


def test_label_shape_mismatch_names_the_pair_and_both_shapes():
    image, labels = ellipses(0)
    with pytest.raises(ParameterError, match=r"pair 1.*\(100, 128\).*128x128"):
        load_training_data([(image, labels), (image, labels[:100])])


def test_label_shape_mismatch_in_folders_names_the_file(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    image, labels = ellipses(0)
    tifffile.imwrite(tmp_path / "img" / "a.tif", image)
    tifffile.imwrite(tmp_path / "lab" / "a.tif", labels[:, :90])
    with pytest.raises(ParameterError, match=r"a\.tif.*\(128, 90\)"):
        load_training_data((tmp_path / "img", tmp_path / "lab"))


def test_folders_pair_by_stem_and_warn_about_unpaired_images(tmp_path):
    from skimage import io

    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for i in range(3):
        image, labels = ellipses(i, objects=2)
        io.imsave(tmp_path / "img" / f"cell{i}.png", image, check_contrast=False)
        if i < 2:
            name = f"cell{i}.tif" if i == 0 else f"cell{i}_labels.tif"
            tifffile.imwrite(tmp_path / "lab" / name, labels)
    with pytest.warns(UserWarning, match=r"1 image\(s\) have no label file.*cell2\.png"):
        data = load_training_data((str(tmp_path / "img"), str(tmp_path / "lab")))
    assert [s.name for s in data.samples] == ["cell0.png", "cell1.png"]
    assert data.objects == 4 and all(s.rgb.shape == (128, 128, 3) for s in data.samples)
    # One folder holding both: x.png pairs with x_labels.tif.
    (tmp_path / "lab" / "cell1_labels.tif").rename(tmp_path / "img" / "cell1_labels.tif")
    with pytest.warns(UserWarning, match="cell0.png, cell2.png"):
        both = load_training_data((tmp_path / "img", tmp_path / "img"))
    assert [s.name for s in both.samples] == ["cell1.png"]


def test_a_folder_image_that_cannot_be_read_is_skipped_with_a_warning(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    image, labels = ellipses(0, objects=3)
    tifffile.imwrite(tmp_path / "img" / "good.tif", image)
    tifffile.imwrite(tmp_path / "lab" / "good.tif", labels)
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png")
    tifffile.imwrite(tmp_path / "lab" / "broken.tif", labels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_training_data((tmp_path / "img", tmp_path / "lab"))
    said = [str(w.message).split(":")[0] for w in caught if issubclass(w.category, UserWarning)]
    assert said == ["broken.png is skipped"]
    assert [s.name for s in data.samples] == ["good.tif"] and data.skipped == ["broken.png"]


def test_images_without_objects_are_skipped_with_a_warning():
    image, labels = ellipses(0, objects=3)
    with pytest.warns(UserWarning, match="pair 1 has no objects"):
        data = load_training_data([(image, labels), (image, np.zeros_like(labels))])
    assert len(data.samples) == 1 and data.skipped == ["pair 1"] and data.objects == 3


def test_no_objects_at_all_and_empty_data_are_errors():
    image, labels = ellipses(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ParameterError, match="nothing to train on"):
            load_training_data([(image, np.zeros_like(labels))] * 2)
    with pytest.raises(ParameterError, match="empty"):
        load_training_data([])
    with pytest.raises(FormatError, match="non-integer"):
        load_training_data([(image, labels + 0.5)])
    with pytest.raises(FormatError, match="like a colour image"):
        load_training_data([(np.stack([image] * 3, axis=-1), np.stack([labels] * 3, axis=-1))])


def test_napari_layer_data_and_stacks():
    image, labels = ellipses(0, objects=2)
    single = load_training_data((image, labels))
    assert len(single.samples) == 1 and single.samples[0].objects == (1, 2)
    with pytest.warns(UserWarning, match="slice 1 has no objects"):
        stack = load_training_data((np.stack([image, image]), np.stack([labels, labels * 0])))
    assert [s.name for s in stack.samples] == ["the image, slice 0"] and stack.skipped == ["the image, slice 1"]
    sparse = load_training_data((image, np.where(labels > 0, labels * 1_000_000, 0)))
    assert sparse.samples[0].objects == (1, 2) and set(np.unique(sparse.samples[0].labels)) == {0, 1, 2}


# ---- geometry and prompts ------------------------------------------------------------------------------


def test_targets_are_exact_area_coverage_in_the_low_res_frame():
    labels = np.zeros((100, 60), np.int32)
    labels[10:30, 5:25] = 1
    labels[50:97, 40:60] = 2
    geometry = Geometry((100, 60), (128, 77), img_size=128, low_res=32)
    first, second = object_targets(labels, [1, 2], geometry)
    pixel = (4 * 100 / 128) * (4 * 60 / 77)  # original pixels per low-res pixel
    assert first.soft.sum() * pixel == pytest.approx(400, rel=1e-4)
    assert second.soft.sum() * pixel == pytest.approx(47 * 20, rel=1e-4)
    # Rows 10..30 of the original are 12.8..38.4 in the input frame: low-res rows 3..9.
    assert first.soft_origin == (3, 1) and first.soft.shape == (7, 8)
    assert first.soft.max() == pytest.approx(1) and geometry.valid == (32, 20)
    square = Geometry((128, 128), (128, 128), 128, 32)
    block = np.zeros((128, 128), np.int32)
    block[8:24, 4:12] = 1
    (target,) = object_targets(block, [1], square)
    assert target.soft_origin == (2, 1) and np.array_equal(target.soft, np.ones((4, 2)))


def test_prompts_follow_the_objects():
    rng = np.random.default_rng(0)
    labels = ellipses(3, objects=3)[1]
    geometry = Geometry(labels.shape, (128, 128), 128, 32)
    objects = object_targets(labels, [1, 2, 3], geometry)
    for _ in range(5):
        points = positive_points(objects, rng)
        assert [labels[int(y), int(x)] for x, y in points] == [1, 2, 3]
    centre = interior_points(objects)
    assert [labels[int(y), int(x)] for x, y in centre] == [1, 2, 3]
    rect = np.zeros((40, 40), np.int32)
    rect[0:9, 10:19] = 1  # touches the top edge: the edge counts as boundary
    (obj,) = object_targets(rect, [1], Geometry((40, 40), (128, 128), 128, 32))
    assert interior_points([obj])[0].tolist() == [14, 4]
    boxes = np.concatenate([jittered_boxes(objects, labels.shape, rng) for _ in range(200)])
    exact = np.tile(np.stack([o.box for o in objects]), (200, 1))
    size = np.tile(exact[:, 2:] - exact[:, :2] + 1, 2)
    assert np.all(np.abs(boxes - exact) <= 0.1 * size + 1e-9)
    assert np.abs(boxes - exact).max() > 0.05 * size.min()
    assert boxes.min() >= 0 and boxes[:, 0::2].max() <= 127 and boxes[:, 1::2].max() <= 127


def test_correction_points_come_from_the_error_region():
    rng = np.random.default_rng(0)
    geometry = Geometry((128, 128), (128, 128), 128, 32)
    binary = np.zeros((3, 32, 32), bool)
    binary[:, 8:16, 8:16] = True
    logits = np.full((3, 32, 32), -5.0)
    logits[0, 8:16, 8:12] = 5  # half the object missed -> positive points in the missed half
    logits[1, 8:16, 8:16] = 5
    logits[1, 20:22, 20:22] = 5  # spill -> negative points there
    logits[2, 8:16, 8:16] = 5  # perfect -> padding
    for _ in range(20):
        coords, labels = correction_points(logits, binary, geometry, rng)
        assert labels.tolist() == [1, 0, -1]
        x, y = coords[0]
        assert 12 * 4 - 0.5 <= x < 16 * 4 - 0.5 and 8 * 4 - 0.5 <= y < 16 * 4 - 0.5
        x, y = coords[1]
        assert 20 * 4 - 0.5 <= x < 22 * 4 - 0.5 and 20 * 4 - 0.5 <= y < 22 * 4 - 0.5


def test_dihedral_gives_eight_distinct_views():
    labels = np.arange(12).reshape(3, 4)
    views = {dihedral(labels, k).tobytes() + bytes(dihedral(labels, k).shape) for k in range(8)}
    assert len(views) == 8 and np.array_equal(dihedral(labels, 0), labels)
    assert dihedral(np.zeros((3, 4, 3)), 1).shape == (4, 3, 3)


# ---- losses ----------------------------------------------------------------------------------------


def test_losses_reward_the_right_mask_and_pick_the_best_output():
    target = torch.zeros(1, 16, 16)
    target[0, 4:12, 4:12] = 1
    good = (target * 2 - 1) * 10
    bad = -good
    assert focal_loss(good, target) < 1e-4 < focal_loss(bad, target)
    assert dice_loss(good, target) < 0.01 and dice_loss(bad, target) > 0.9
    logits = torch.stack([bad[0], good[0], torch.zeros(16, 16)])[None]
    iou_pred = torch.tensor([[0.0, 1.0, 0.5]], requires_grad=True)
    loss, chosen, true_iou = sam_loss(logits, iou_pred, target, target.bool())
    assert chosen.tolist() == [1]
    assert true_iou[0, 1] == 1 and true_iou[0, 0] == 0
    assert loss.item() == pytest.approx(dice_loss(good, target).item() + 20 * focal_loss(good, target).item()
                                        + ((0.5 - true_iou[0, 2]) ** 2 / 3).item(), rel=1e-4)
    assert mask_iou(torch.full((1, 4, 4), -1.0), torch.zeros(1, 4, 4, dtype=torch.bool)).item() == 1


# ---- training ----------------------------------------------------------------------------------------


def test_decoder_training_learns_and_leaves_the_encoder_alone(learned):
    result, (encoder_before, decoder_before) = learned
    history = result.history
    assert [row["epoch"] for row in history] == list(range(7)) and result.steps == 54
    assert history[0]["train_loss"] is None and history[0]["val_miou"] < 0.3
    assert history[-1]["train_loss"] < 0.5 * history[1]["train_loss"]
    assert history[-1]["val_loss"] < 0.5 * history[0]["val_loss"]
    assert history[-1]["val_miou"] > history[0]["val_miou"] + 0.3
    assert result.best_epoch > 0 and result.stopped == "completed"
    after = result.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in encoder_before.items())
    assert sum(not torch.equal(after[k], v) for k, v in decoder_before.items()) > 0.9 * len(decoder_before)
    assert all(p.requires_grad for p in result.model.parameters())
    with open(result.log_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "step", "train_loss", "val_loss", "val_miou", "seconds"]
    assert [int(r["step"]) for r in rows] == [0, 9, 18, 27, 36, 45, 54]


def test_checkpoint_has_official_keys_and_loads_everywhere(learned):
    result, _ = learned
    state = torch.load(result.model_path, map_location="cpu", weights_only=True)
    official = official_sam(MICRO_VIT)
    assert set(state) == set(official.state_dict())
    official.load_state_dict(state, strict=True)
    loaded = samkit.load_model(result.model_path, device="cpu")
    expected = result.model.state_dict()
    assert all(torch.equal(loaded.state_dict()[k], expected[k]) for k in expected)
    image = np.repeat(ellipses(100)[0][..., None], 3, axis=2)
    ours = samkit.Predictor(loaded, precision="fp32")
    ours.set_image(image)
    from segment_anything import SamPredictor

    theirs = SamPredictor(official)
    theirs.set_image(image)
    point = (np.array([[64, 64]]), np.array([1]))
    np.testing.assert_allclose(ours.predict(*point)[1], theirs.predict(*point)[1], atol=1e-4)
    card = json.loads(result.card_path.read_text())
    assert card["model_file"] == "model.pth" and card["mode"] == "decoder"
    assert card["data"]["images"] == 12 and card["data"]["objects"] == 12
    assert card["data"]["train_images"] == 9 and card["data"]["validation_images"] == 3
    assert card["epochs"] == 6 and card["steps"] == 54 and card["best_epoch"] == result.best_epoch
    assert card["validation"]["miou"] > card["validation"]["base_miou"]
    assert card["samkit_version"] == samkit.__version__ and card["architecture"] == "custom_vit"
    assert card["time_seconds"] > 0 and card["stopped"] == "completed"


@pytest.mark.parametrize("config", [MICRO_TINY_VIT, MICRO_VIT], ids=["tiny_vit", "vit"])
def test_full_mode_trains_the_encoder(tmp_path, config):
    model = micro_model(config)
    encoder_before = encoder_state(model)
    params = {name for name, _ in model.named_parameters()}
    data = [ellipses(seed, objects=2) for seed in range(2)]
    result = train(model, data, tmp_path, mode="full", epochs=1, objects_per_batch=2, val_fraction=0, **FAST)
    assert result.steps == 2 and result.best_epoch == 1
    after = result.model.state_dict()
    changed = [k for k, v in encoder_before.items() if not torch.equal(after[k], v)]
    assert set(changed) == {k for k in encoder_before if k in params}
    card = json.loads(result.card_path.read_text())
    assert card["mode"] == "full" and card["settings"]["lr"] == 1e-5


def test_one_image_splits_its_objects_for_validation(tmp_path):
    image, labels = ellipses(5, objects=4)
    result = train(micro_model(), (image, labels), tmp_path, epochs=1, objects_per_batch=4, **FAST)
    card = json.loads(result.card_path.read_text())
    assert card["data"]["validation_split"] == "objects"
    assert (card["data"]["train_objects"], card["data"]["validation_objects"]) == (3, 1)
    assert result.history[-1]["val_miou"] is not None and result.steps == 1


def test_cancel_then_resume_continues_where_it_stopped(tmp_path):
    data = [ellipses(seed, objects=2) for seed in range(4)]
    settings = dict(epochs=3, objects_per_batch=1, lr=1e-3, **FAST)
    reference = train(micro_model(), data, tmp_path / "straight", **settings)
    assert reference.steps == 18

    seen = []
    # progress counts the 4 embeddings, then the steps: cancel after step 8.
    result = train(micro_model(), data, tmp_path / "run", cancel=lambda: len(seen) >= 12,
                   progress=lambda done, total: seen.append(done), **settings)
    assert result.stopped == "cancelled" and result.steps == 8 and result.epochs == 1
    assert [row["epoch"] for row in result.history] == [0, 1] and result.model_path.exists()
    with pytest.raises(ParameterError, match="resume=True"):
        train(micro_model(), data, tmp_path / "run", **settings)
    with pytest.raises(ParameterError, match="other data"):
        train(micro_model(), data[:3], tmp_path / "run", resume=True, **settings)
    with pytest.raises(ParameterError, match="mode='decoder'"):
        train(micro_model(), data, tmp_path / "run", resume=True, mode="full", **settings)

    steps = []
    resumed = train(micro_model(), data, tmp_path / "run", resume=True,
                    progress=lambda done, total: steps.append((done, total)), **settings)
    assert resumed.stopped == "completed" and resumed.steps == 18 and resumed.epochs == 3
    assert [row["epoch"] for row in resumed.history] == [0, 1, 2, 3]
    # 4 embeddings + 18 steps in all; the resumed run reports from step 8 on.
    assert steps[4] == (4 + 9, 22) and steps[-1] == (22, 22)
    final = resumed.model.state_dict()
    expected = reference.model.state_dict()
    assert all(torch.allclose(final[k], expected[k], atol=1e-6) for k in expected)
    # Row 0 is the starting weights' validation: no training loss yet.
    assert resumed.history[0]["train_loss"] is None and reference.history[0]["train_loss"] is None
    assert [r["train_loss"] for r in resumed.history[1:]] == pytest.approx(
        [r["train_loss"] for r in reference.history[1:]], rel=1e-5)


def test_crash_while_saving_leaves_the_previous_files_intact(tmp_path, monkeypatch):
    data = [ellipses(seed) for seed in range(3)]
    train(micro_model(), data, tmp_path, epochs=1, **FAST)
    saved = {name: (tmp_path / name).read_bytes() for name in ("model.pth", STATE_FILE)}
    real_save = torch.save

    def crash(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as file:
            file.truncate(100)
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="No space"):
        train(micro_model(seed=1), data, tmp_path, epochs=1, overwrite=True, **FAST)
    with pytest.raises(OSError, match="No space"):
        train(micro_model(), data, tmp_path, epochs=2, resume=True, **FAST)
    monkeypatch.undo()
    assert {name: (tmp_path / name).read_bytes() for name in saved} == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv", "model.json", "model.pth", STATE_FILE]
    samkit.load_model(tmp_path / "model.pth", device="cpu")
    resumed = train(micro_model(), data, tmp_path, epochs=2, resume=True, **FAST)
    assert resumed.epochs == 2 and [row["epoch"] for row in resumed.history] == [0, 1, 2]


def test_bad_settings_are_refused(tmp_path):
    data = [ellipses(0)]
    for kwargs, match in [({"mode": "encoder"}, "mode"), ({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"),
                          ({"val_fraction": 1.0}, "val_fraction"), ({"objects_per_batch": 0}, "objects_per_batch")]:
        with pytest.raises(ParameterError, match=match):
            train(micro_model(), data, tmp_path, **kwargs)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ParameterError, match="is a file"):
        train(micro_model(), data, tmp_path / "file")
    assert not Path(tmp_path / STATE_FILE).exists()


def test_cancel_from_progress_and_before_training(tmp_path):
    data = [ellipses(seed) for seed in range(3)]

    def stop_at_first_step(done: int, total: int) -> None:
        if done > 3:  # 3 embeddings, then the steps
            raise Cancelled("stop")

    result = train(micro_model(), data, tmp_path / "a", epochs=2, progress=stop_at_first_step, **FAST)
    assert result.stopped == "cancelled" and result.steps == 1 and result.model_path.exists()
    with pytest.raises(Cancelled, match="nothing was trained"):
        train(micro_model(), data, tmp_path / "b", cancel=lambda: True, **FAST)


def test_early_stopping_keeps_the_best_weights(tmp_path, monkeypatch):
    epochs = iter(range(100))
    monkeypatch.setattr(_Run, "validate", lambda self: (1.0 + next(epochs), 0.5))
    model = micro_model()
    start = decoder_state(model)
    result = train(model, [ellipses(seed) for seed in range(3)], tmp_path, epochs=10, patience=2,
                   precision="fp32", correction_rounds=1)
    assert result.stopped == "early_stopping" and result.epochs == 2 and result.best_epoch == 0
    assert result.best_loss == 1.0
    saved = torch.load(result.model_path, weights_only=True)
    assert all(torch.equal(saved[k], v) and torch.equal(result.model.state_dict()[k], v) for k, v in start.items())


def test_command_line_helpers(tmp_path, capsys):
    from helpers import write_checkpoint

    checkpoint = write_checkpoint(tmp_path / "micro.pth", MICRO_VIT)
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    for i in range(2):
        image, labels = ellipses(i, objects=2)
        tifffile.imwrite(tmp_path / "images" / f"c{i}.tif", image)
        tifffile.imwrite(tmp_path / "labels" / f"c{i}.tif", labels)
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    add_arguments(parser)
    args = parser.parse_args(["--model", str(checkpoint), "--images", str(tmp_path / "images"), "--labels",
                              str(tmp_path / "labels"), "-o", str(tmp_path / "out"), "--epochs", "1"])
    args.no_cache = True
    run_from_args(args)
    printed = capsys.readouterr().out
    assert "epoch 1 (step 1)" in printed and "model: " in printed
    # The last line says plainly whether training improved the model.
    improved = json.loads((tmp_path / "out" / "model.json").read_text())["improved"]
    assert printed.strip().splitlines()[-1].startswith("Best epoch 1" if improved else "Training did not improve")
    assert samkit.load_model(tmp_path / "out" / "model.pth", device="cpu").img_size == 128


def test_training_schedule_warms_up_then_follows_a_cosine():
    def rate(step: int, **settings) -> float:
        run = SimpleNamespace(settings={"lr": 1e-3, **settings}, step=step, total_steps=100)
        return _Run.learning_rate(run)

    assert rate(0) == rate(99) == 1e-3
    assert rate(0, warmup_steps=10) == pytest.approx(1e-4)
    assert rate(9, warmup_steps=10) == pytest.approx(1e-3)
    assert rate(50, lr_schedule="cosine") == pytest.approx(5e-4)
    assert rate(100, lr_schedule="cosine", warmup_steps=10) == pytest.approx(0, abs=1e-12)
    with pytest.raises(ParameterError, match="lr_schedule"):
        train("unused.pth", [], "unused", lr_schedule="linear")
