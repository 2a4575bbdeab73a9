"""ONNX export: the files run in onnxruntime like samkit's model and the official SamOnnxModel."""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers import TINY_TINY_VIT, TINY_VIT, official_twin, random_state_dict
from segment_anything.utils.onnx import SamOnnxModel as OfficialOnnxModel

from samkit import ParameterError, Predictor, SamkitError
from samkit.model import build_sam, common
from samkit.model.image_encoder import RelPosAttention
from samkit.onnx_cli import add_arguments, run_from_args
from samkit.onnx_export import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    EXTRA_METRICS_OUTPUTS,
    OnnxExportError,
    _publish,
    export_decoder,
    export_encoder,
)

TOL = 1e-4  # absolute, or relative to the output's scale where it exceeds 1


def assert_close(got: np.ndarray, ref, what: str, tol: float = TOL) -> None:
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    err = np.abs(got - ref).max() / max(1.0, np.abs(ref).max())
    assert err <= tol, f"{what}: error {err:.2e}"


def tiny_model(config=TINY_VIT, seed: int = 0):
    model = build_sam(config)
    model.load_state_dict(random_state_dict(config, seed))
    return model


def session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, **inputs) -> dict[str, np.ndarray]:
    feeds = {name: np.asarray(value, dtype=np.float32) for name, value in inputs.items()}
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def embedding(model):
    torch.manual_seed(3)
    with torch.no_grad():
        return model.image_encoder(torch.randn(1, 3, 256, 256))


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    return {
        "all": session(export_decoder(model, folder / "decoder.onnx")),
        "single": session(export_decoder(model, folder / "single.onnx", return_single_mask=True)),
        "metrics": session(
            export_decoder(model, folder / "metrics.onnx", use_stability_score=True, return_extra_metrics=True)
        ),
    }


def onnx_inputs(embedding, coords, labels, orig_size, mask=None) -> dict:
    """The decoder's inputs; points in the model's input frame."""
    coords = np.asarray(coords, dtype=np.float32).reshape(1, -1, 2)
    return {
        "image_embeddings": embedding.numpy(),
        "point_coords": coords,
        "point_labels": np.asarray(labels, dtype=np.float32).reshape(1, -1),
        "mask_input": np.zeros((1, 1, 4 * embedding.shape[-2], 4 * embedding.shape[-1])) if mask is None else mask,
        "has_mask_input": [0.0 if mask is None else 1.0],
        "orig_im_size": np.asarray(orig_size, dtype=np.float32),
    }


POINTS = [[60.0, 40.0], [200.5, 100.2], [10.0, 140.0], [128.0, 64.0]]
BOX = [30.0, 20.0, 180.0, 130.0]
MASK = np.random.default_rng(5).normal(0, 5, (1, 1, 64, 64)).astype(np.float32)
# name: (ONNX coords, ONNX labels, samkit points, samkit labels, samkit box, mask)
CASES = {
    "one point": ([POINTS[0], [0, 0]], [1, -1], POINTS[:1], [1], None, None),
    "points and a padding point": (POINTS[:3] + [[0, 0]], [1, 0, 1, -1], POINTS[:3], [1, 0, 1], None, None),
    "box": ([BOX[:2], BOX[2:]], [2, 3], None, None, BOX, None),
    "box and points": (POINTS[:2] + [BOX[:2], BOX[2:]], [1, 0, 2, 3], POINTS[:2], [1, 0], BOX, None),
    "mask input": ([POINTS[1], [0, 0]], [1, -1], POINTS[1:2], [1], None, MASK),
}
SIZES = [(300, 517), (517, 300), (41, 90)]


def samkit_outputs(model, embedding, orig_size, points, labels, box, mask, multimask: bool):
    """Logits at the image size, IoU and low-res logits from samkit's Predictor."""
    predictor = Predictor(model, precision="fp32")
    predictor.set_image_embedding(embedding, orig_size)
    masks, iou, low = predictor.predict_torch(
        None if points is None else torch.tensor([points], dtype=torch.float32),
        None if labels is None else torch.tensor([labels]),
        None if box is None else torch.tensor([box], dtype=torch.float32),
        None if mask is None else torch.from_numpy(mask),
        multimask_output=multimask,
        return_logits=True,
    )
    return masks.numpy(), iou.numpy(), low.numpy()


@pytest.mark.parametrize("orig_size", SIZES)
@pytest.mark.parametrize("case", list(CASES))
def test_decoder_matches_samkit(model, embedding, exported, case, orig_size):
    coords, labels, points, point_labels, box, mask = CASES[case]
    out = run(exported["all"], **onnx_inputs(embedding, coords, labels, orig_size, mask))
    assert list(out) == list(DECODER_OUTPUTS)
    assert out["masks"].shape == (1, 4, *orig_size)
    assert out["low_res_masks"].shape == (1, 4, 64, 64)
    for multimask, tokens in ((True, slice(1, None)), (False, slice(0, 1))):
        masks, iou, low = samkit_outputs(model, embedding, orig_size, points, point_labels, box, mask, multimask)
        assert_close(out["iou_predictions"][:, tokens], iou, f"{case} iou")
        assert_close(out["low_res_masks"][:, tokens], low, f"{case} low-res")
        assert_close(out["masks"][:, tokens], masks, f"{case} masks")


@pytest.mark.parametrize("case", list(CASES))
def test_single_mask_follows_the_number_of_points(model, embedding, exported, case):
    coords, labels, points, point_labels, box, mask = CASES[case]
    out = run(exported["single"], **onnx_inputs(embedding, coords, labels, (300, 517), mask))
    assert out["masks"].shape == (1, 1, 300, 517) and out["iou_predictions"].shape == (1, 1)
    if len(labels) >= 3:  # unambiguous: the single-mask token
        masks, iou, low = samkit_outputs(model, embedding, (300, 517), points, point_labels, box, mask, False)
    else:  # one click or a box: the best of the three candidates
        masks, iou, low = samkit_outputs(model, embedding, (300, 517), points, point_labels, box, mask, True)
        best = int(np.argmax(iou[0]))
        masks, iou, low = masks[:, best : best + 1], iou[:, best : best + 1], low[:, best : best + 1]
    assert_close(out["iou_predictions"], iou, "iou")
    assert_close(out["low_res_masks"], low, "low-res")
    assert_close(out["masks"], masks, "masks")


def test_number_of_points_varies_across_calls(model, embedding, exported):
    rng = np.random.default_rng(0)
    for n in (1, 3, 11, 19):  # the file was traced with 5; 11 and more take the decoder's other branch
        points = rng.uniform(0, 256, (n, 2)).round(1)
        labels = rng.integers(0, 2, n)
        out = run(exported["all"], **onnx_inputs(embedding, [*points, [0, 0]], [*labels, -1], (300, 517)))
        masks, iou, low = samkit_outputs(model, embedding, (300, 517), points.tolist(), labels.tolist(), None, None, True)
        assert_close(out["iou_predictions"][:, 1:], iou, f"{n} points: iou")
        assert_close(out["low_res_masks"][:, 1:], low, f"{n} points: low-res")
        assert_close(out["masks"][:, 1:], masks, f"{n} points: masks")


def test_padding_point_position_is_ignored(embedding, exported):
    at_origin = run(exported["all"], **onnx_inputs(embedding, [POINTS[0], [0, 0]], [1, -1], (300, 517)))
    elsewhere = run(exported["all"], **onnx_inputs(embedding, [POINTS[0], [123, 45]], [1, -1], (300, 517)))
    for name in DECODER_OUTPUTS:
        np.testing.assert_array_equal(at_origin[name], elsewhere[name])


@pytest.fixture(scope="module")
def official(model):
    return official_twin(random_state_dict(TINY_VIT, 0), TINY_VIT)


def official_outputs(official, inputs: dict, **options) -> list[np.ndarray]:
    wrapper = OfficialOnnxModel(official, **{"return_single_mask": False, **options})
    with torch.no_grad():
        return [t.numpy() for t in wrapper(**{k: torch.as_tensor(np.asarray(v, np.float32)) for k, v in inputs.items()})]


OFFICIAL_PROMPTS = {
    "one point": ([POINTS[0], [0, 0]], [1, -1], None),
    "two points and a mask": ([POINTS[0], POINTS[1], [50, 60]], [1, 0, -1], MASK),
    "box": ([BOX[:2], BOX[2:]], [2, 3], None),
    "box and point": ([POINTS[2], BOX[:2], BOX[2:]], [0, 2, 3], None),
    "many points": ([*POINTS, *POINTS[::-1], [0, 0]], [1, 0, 1, 1, 0, 0, 1, 1, -1], None),
}


@pytest.mark.parametrize("mode", ["all", "single", "metrics"])
@pytest.mark.parametrize("prompt", list(OFFICIAL_PROMPTS))
def test_decoder_matches_official_onnx_model(embedding, exported, official, mode, prompt):
    coords, labels, mask = OFFICIAL_PROMPTS[prompt]
    options = {
        "all": {},
        "single": {"return_single_mask": True},
        "metrics": {"use_stability_score": True, "return_extra_metrics": True},
    }[mode]
    inputs = onnx_inputs(embedding, coords, labels, (300, 517), mask)
    ours = run(exported[mode], **inputs)
    ref = official_outputs(official, inputs, **options)
    names = EXTRA_METRICS_OUTPUTS if mode == "metrics" else DECODER_OUTPUTS
    assert list(ours) == list(names) and len(ref) == len(names)
    for name, expected in zip(names, ref):
        if name == "areas":  # pixel counts: a logit within rounding of 0 may flip
            assert ours[name].dtype == np.int64
            assert np.abs(ours[name] - expected).max() <= 1e-3 * expected.max()
            np.testing.assert_array_equal(ours[name], (ours["masks"] > 0).sum(axis=(-2, -1)))
        elif mode == "metrics" and name in ("iou_predictions", "stability_scores"):
            assert_close(ours[name], expected, f"{prompt} {name}", tol=1e-3)  # ratios of pixel counts
        else:
            assert_close(ours[name], expected, f"{prompt} {name}")


def test_interface_is_the_official_one(exported, official, tmp_path):
    """Same input and output names, types and shapes as the official exporter writes for these weights."""
    wrapper = OfficialOnnxModel(official, return_single_mask=False)
    dummy = onnx_inputs(torch.zeros(1, 256, 16, 16), np.zeros((5, 2)), [1, 0, 2, 3, -1], (300, 517), MASK)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, tuple(torch.as_tensor(np.asarray(v, np.float32)) for v in dummy.values()), str(tmp_path / "o.onnx"),
            dynamo=False, opset_version=17, input_names=list(dummy), output_names=list(DECODER_OUTPUTS),
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
        )
    reference = session(tmp_path / "o.onnx")
    ours = exported["all"]
    assert [i.name for i in ours.get_inputs()] == [i.name for i in reference.get_inputs()] == list(DECODER_INPUTS)
    assert [(i.shape, i.type) for i in ours.get_inputs()] == [(i.shape, i.type) for i in reference.get_inputs()]
    assert [o.name for o in ours.get_outputs()] == [o.name for o in reference.get_outputs()]
    # At the size it was traced with: the official file keeps that crop of the padding for every size.
    inputs = onnx_inputs(torch.randn(1, 256, 16, 16), [POINTS[3], [0, 0]], [1, -1], (300, 517), MASK)
    for got, expected in zip(run(ours, **inputs).values(), run(reference, **inputs).values()):
        assert_close(got, expected, "official file")


def test_tiny_vit_decoder_with_medsam_framing(tmp_path):
    """MobileSAM's layout, fed MedSAM's way: the image fills the whole square, there is no padding to crop."""
    model = tiny_model(TINY_TINY_VIT, seed=1).train()
    model.preprocessing = "medsam"
    onednn = common.ONEDNN_LINEAR
    sess = session(export_decoder(model, tmp_path / "mobile.onnx", opset=16))
    assert all(m.training for m in model.modules())
    assert common.ONEDNN_LINEAR == onednn
    torch.manual_seed(4)
    features = torch.randn(1, 256, 64, 64)
    out = run(sess, **onnx_inputs(features, [POINTS[0], [900, 500], BOX[:2], BOX[2:]], [1, 0, 2, 3], (600, 800)))
    masks, iou, low = samkit_outputs(model, features, (600, 800), [POINTS[0], [900, 500]], [1, 0], BOX, None, False)
    assert_close(out["iou_predictions"][:, :1], iou, "iou")
    assert_close(out["low_res_masks"][:, :1], low, "low-res")
    assert_close(out["masks"][:, :1], masks, "masks")


@pytest.mark.parametrize("config", [TINY_VIT, TINY_TINY_VIT], ids=["vit", "tiny_vit"])
def test_encoder_matches(config, tmp_path):
    model = tiny_model(config)
    onednn = common.ONEDNN_LINEAR
    sess = session(export_encoder(model, tmp_path / "encoder.onnx"))
    assert common.ONEDNN_LINEAR == onednn
    assert not any("forward" in vars(m) for m in model.modules() if isinstance(m, RelPosAttention))
    assert [i.name for i in sess.get_inputs()] == ["image"] and [o.name for o in sess.get_outputs()] == ["image_embeddings"]
    size = model.img_size
    torch.manual_seed(2)
    image = model.preprocess(torch.rand(1, 3, size, size - 40) * 255)
    with torch.no_grad():
        expected = model.image_encoder(image).numpy()
    got = sess.run(None, {"image": image.numpy()})[0]
    assert got.shape == (1, 256, size // 16, size // 16)
    assert_close(got, expected, "image embedding")


@pytest.mark.parametrize("opset", [10, 21, True, "17", 16.0])
def test_unsupported_opset(model, tmp_path, opset):
    with pytest.raises(ParameterError, match="opset"):
        export_decoder(model, tmp_path / "d.onnx", opset=opset)
    assert not list(tmp_path.iterdir())


def test_encoder_needs_opset_14(model, tmp_path):
    with pytest.raises(ParameterError, match="14"):
        export_encoder(model, tmp_path / "e.onnx", opset=13)
    assert not list(tmp_path.iterdir())


def test_failed_export_leaves_no_file(model, tmp_path, monkeypatch):
    target = tmp_path / "decoder.onnx"
    target.write_bytes(b"previous export")

    def broken(module, args, f, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"half a model")
        raise RuntimeError("tracing went wrong")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(OnnxExportError, match="tracing went wrong"):
        export_decoder(model, target)
    assert target.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["decoder.onnx"]


def test_unwritable_output(model, tmp_path):
    with pytest.raises(SamkitError, match="does not exist"):
        export_decoder(model, tmp_path / "missing" / "d.onnx")
    folder = tmp_path / "taken.onnx"
    folder.mkdir()
    with pytest.raises(OnnxExportError, match="is a folder"):
        export_encoder(model, folder)
    assert [p.name for p in tmp_path.iterdir()] == ["taken.onnx"] and not list(folder.iterdir())


def test_models_that_cannot_be_exported(model, tmp_path, monkeypatch):
    with pytest.raises(ParameterError, match="float32"):
        export_decoder(copy.deepcopy(model).double(), tmp_path / "d.onnx")
    oblong = copy.deepcopy(model)
    oblong.prompt_encoder.input_image_size = (256, 320)
    with pytest.raises(OnnxExportError, match="square"):
        export_decoder(oblong, tmp_path / "d.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(OnnxExportError, match="pip install onnx"):
        export_decoder(model, tmp_path / "d.onnx")
    assert not list(tmp_path.iterdir())


def test_large_model_weights_land_in_one_data_file(tmp_path):
    """Over 2 GB torch writes one file per tensor beside the model; the export gathers them into one."""
    import onnx

    staging = tmp_path / "staging"
    staging.mkdir()
    staged = staging / "encoder.onnx"
    layer = torch.nn.Linear(64, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, (torch.ones(1, 64),), str(staged), dynamo=False, input_names=["x"])
    proto = onnx.load(str(staged))
    onnx.save_model(proto, str(staged), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
    assert len(list(staging.iterdir())) > 2
    out = tmp_path / "out"
    out.mkdir()
    _publish(staged, out / "encoder.onnx")
    assert sorted(p.name for p in out.iterdir()) == ["encoder.onnx", "encoder.onnx.data"]
    got = session(out / "encoder.onnx").run(None, {"x": np.ones((1, 64), np.float32)})[0]
    assert_close(got, layer(torch.ones(1, 64)).detach().numpy(), "linear")


def cli_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--device", default="cpu")
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_writes_decoder_and_encoder(tiny_checkpoint, tmp_path):
    lines: list[str] = []
    args = cli_args("--model", str(tiny_checkpoint), "-o", str(tmp_path / "dec.onnx"),
                    "--encoder", str(tmp_path / "enc.onnx"), "--return-single-mask", "--opset", "14")
    run_from_args(args, out=lines.append)
    assert len(lines) == 2 and "dec.onnx" in lines[0] and "enc.onnx" in lines[1]
    decoder = session(tmp_path / "dec.onnx")
    out = run(decoder, **onnx_inputs(torch.zeros(1, 256, 16, 16), [POINTS[0], [0, 0]], [1, -1], (100, 120)))
    assert out["masks"].shape == (1, 1, 100, 120)
    encoder = session(tmp_path / "enc.onnx")
    assert encoder.run(None, {"image": np.zeros((1, 3, 256, 256), np.float32)})[0].shape == (1, 256, 16, 16)


def test_cli_checks_before_loading(tmp_path):
    missing_model = str(tmp_path / "no-such-model.pth")
    with pytest.raises(ParameterError, match="14"):
        run_from_args(cli_args("--model", missing_model, "-o", str(tmp_path / "d.onnx"),
                               "--encoder", str(tmp_path / "e.onnx"), "--opset", "13"))
    with pytest.raises(ParameterError, match="same file"):
        run_from_args(cli_args("--model", missing_model, "-o", str(tmp_path / "d.onnx"), "--encoder",
                               str(tmp_path / "d.onnx")))
    with pytest.raises(SamkitError, match="does not exist"):
        run_from_args(cli_args("--model", missing_model, "-o", str(tmp_path / "no" / "d.onnx")))
    assert not list(tmp_path.iterdir())


def test_import_does_not_load_onnx():
    code = (
        "import sys, samkit.onnx_export, samkit.onnx_cli; "
        "print(sorted(m for m in ('onnx', 'onnxruntime', 'torch.onnx', 'torch._dynamo') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
