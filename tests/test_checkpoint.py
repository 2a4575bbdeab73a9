"""Reading checkpoint files safely, recognising the architecture, and the errors for everything else."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_TINY_VIT, TINY_VIT, random_state_dict, write_checkpoint

import samkit
import samkit.device
from samkit import CheckpointError, SamkitError
from samkit.checkpoint import model_from_state_dict, read_state_dict
from samkit.device import native_bf16, resolve_device, resolve_precision
from samkit.model import (
    ARCHITECTURES,
    DecoderConfig,
    ImageEncoderViT,
    SamConfig,
    TinyViT,
    ViTConfig,
    config_from_state_dict,
)

# Key names and shapes of the published checkpoints (vit_t is MobileSAM, classifier head included).
REFERENCE = Path(__file__).parent / "data"


def official_keys(arch: str) -> dict[str, tuple[int, ...]]:
    """name -> shape, from the reference key list of an official checkpoint."""
    keys = {}
    for line in (REFERENCE / f"keys_{arch}.txt").read_text().splitlines():
        if not line.strip():
            continue
        name, shape = line.split("\t")
        inside = shape.strip().strip("[]").strip()
        keys[name] = tuple(int(s) for s in inside.split(",")) if inside else ()
    return keys


def official_like_state(arch: str) -> dict[str, torch.Tensor]:
    """A state dict with exactly the official key set and shapes (zeros; BatchNorm counters int64)."""
    state = {}
    for name, shape in official_keys(arch).items():
        dtype = torch.int64 if name.endswith("num_batches_tracked") else torch.float32
        state[name] = torch.zeros(shape, dtype=dtype)
    return state


# --- the official architectures --------------------------------------------------------------

VIT_SIZES = {
    "vit_b": {"embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn_indexes": (2, 5, 8, 11)},
    "vit_l": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "global_attn_indexes": (5, 11, 17, 23)},
    "vit_h": {"embed_dim": 1280, "depth": 32, "num_heads": 16, "global_attn_indexes": (7, 15, 23, 31)},
}
KEY_COUNTS = {"vit_b": 314, "vit_l": 482, "vit_h": 594, "vit_t": 439}


@pytest.mark.parametrize("arch", ["vit_b", "vit_l", "vit_h", "vit_t"])
def test_official_key_set_loads_strictly(arch):
    state = official_like_state(arch)
    assert len(state) == KEY_COUNTS[arch]
    # a recognisable value, to see that the weights were really loaded
    probe = "mask_decoder.iou_token.weight"
    state[probe] = torch.full(state[probe].shape, 0.25)

    config = config_from_state_dict(state)
    assert config.architecture == arch
    assert config == ARCHITECTURES[arch]

    model = model_from_state_dict(state, source=f"{arch} test weights")
    encoder = model.image_encoder.config
    if arch == "vit_t":
        assert type(model.image_encoder) is TinyViT
        assert encoder.embed_dims == (64, 128, 160, 320)
        assert encoder.depths == (2, 2, 6, 2)
        assert encoder.num_heads[1:] == (4, 5, 10)  # stage 0 is convolutional
        assert encoder.window_sizes[1:] == (7, 14, 7)
        assert encoder.num_classes == 1000  # the unused classifier of mobile_sam.pt is kept
    else:
        assert type(model.image_encoder) is ImageEncoderViT
        for field, value in VIT_SIZES[arch].items():
            assert getattr(encoder, field) == value, field
        assert (encoder.img_size, encoder.patch_size, encoder.window_size) == (1024, 16, 14)
    assert model.img_size == 1024
    assert not model.training

    loaded = model.state_dict()
    assert set(loaded) == set(state)
    assert {k: tuple(v.shape) for k, v in loaded.items()} == official_keys(arch)
    assert torch.equal(loaded[probe], state[probe])
    assert not loaded["prompt_encoder.no_mask_embed.weight"].any()


def test_load_model_from_file(tiny_checkpoint):
    model = samkit.load_model(tiny_checkpoint, device="cpu")
    assert isinstance(model, samkit.model.Sam)
    assert model.device == torch.device("cpu")
    assert not model.training
    assert type(model.image_encoder) is ImageEncoderViT
    assert model.image_encoder.config == TINY_VIT.encoder
    assert model.img_size == 256
    expected = random_state_dict(TINY_VIT, 0)
    loaded = model.state_dict()
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_vit_with_8_px_patches_has_a_finer_prompt_grid(tmp_path):
    config = SamConfig(
        ViTConfig(img_size=128, patch_size=8, embed_dim=32, depth=2, num_heads=2, out_chans=32, window_size=4,
                  global_attn_indexes=(1,)),
        DecoderConfig(embed_dim=32, depth=1, num_heads=8, mlp_dim=64, iou_head_hidden_dim=32),
    )
    path = write_checkpoint(tmp_path / "patch8.pth", config, seed=3)
    model = samkit.load_model(path, device="cpu")
    assert model.image_encoder.config == config.encoder
    assert model.prompt_encoder.image_embedding_size == (16, 16)
    assert model.prompt_encoder.mask_input_size == (64, 64)
    predictor = samkit.Predictor(model, precision="fp32")
    predictor.set_image(np.zeros((100, 60), np.uint8))
    assert tuple(predictor.get_image_embedding().shape) == (1, 32, 16, 16)
    masks, scores, low_res = predictor.predict(point_coords=np.array([[30.0, 50.0]]), point_labels=np.array([1]))
    assert masks.shape == (3, 100, 60) and scores.shape == (3,) and low_res.shape == (3, 64, 64)


def test_load_model_accepts_str_path_and_torch_device(tiny_checkpoint):
    model = samkit.load_model(str(tiny_checkpoint), device=torch.device("cpu"))
    assert model.device.type == "cpu"


def test_tiny_tiny_vit_file_loads(tmp_path):
    path = write_checkpoint(tmp_path / "tiny_tiny_vit.pt", TINY_TINY_VIT, seed=1)
    model = samkit.load_model(path, device="cpu")
    assert type(model.image_encoder) is TinyViT
    assert model.image_encoder.config.embed_dims == TINY_TINY_VIT.encoder.embed_dims


# --- wrapped checkpoints ---------------------------------------------------------------------


def _assert_same_weights(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_micro_sam_training_checkpoint(tmp_path):
    state = random_state_dict(TINY_VIT, 3)
    wrapped = {
        "model_state": {f"sam.{k}": v for k, v in state.items()},
        "optimizer_state": {"state": {}, "param_groups": [{"lr": 1e-5}]},
        "epoch": 12,
        "best_metric": 0.125,
    }
    path = tmp_path / "best.pt"
    torch.save(wrapped, path)
    read = read_state_dict(path)
    assert set(read) == set(state)
    _assert_same_weights(samkit.load_model(path, device="cpu"), state)


def test_state_dict_wrapper(tmp_path):
    state = random_state_dict(TINY_VIT, 4)
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": state, "global_step": 100}, path)
    _assert_same_weights(samkit.load_model(path, device="cpu"), state)


def test_state_dict_wrapper_with_module_prefix(tmp_path):
    state = random_state_dict(TINY_VIT, 5)
    path = tmp_path / "ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    _assert_same_weights(samkit.load_model(path, device="cpu"), state)


# --- safety: nothing in the file is executed -------------------------------------------------


def _leave_marker(path: str) -> None:
    Path(path).write_text("this ran while the checkpoint was unpickled")


class _RunsCodeWhenUnpickled:
    def __init__(self, call: tuple) -> None:
        self.call = call

    def __reduce__(self):
        return self.call


def _booby_trapped(path: Path, call: tuple, legacy: bool = False, wrapped: bool = False) -> Path:
    state: dict = dict(random_state_dict(TINY_VIT, 0))
    state["mask_decoder.payload"] = _RunsCodeWhenUnpickled(call)
    obj = {"model_state": state} if wrapped else state
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def test_booby_trapped_file_really_runs_code_when_loaded_unsafely(tmp_path):
    """Control: the crafted file is dangerous, so refusing it below means something."""
    marker = tmp_path / "control-marker"
    path = _booby_trapped(tmp_path / "control.pth", (_leave_marker, (str(marker),)))
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    ("payload", "legacy", "wrapped"),
    [("function", False, False), ("function", True, False), ("function", False, True), ("os.system", False, False)],
    ids=["zip", "legacy-format", "inside-model_state", "os-system"],
)
def test_code_in_checkpoint_is_refused_and_not_run(tmp_path, payload, legacy, wrapped):
    marker = tmp_path / "marker"
    call = (_leave_marker, (str(marker),)) if payload == "function" else (os.system, (f"touch '{marker}'",))
    path = _booby_trapped(tmp_path / "evil.pth", call, legacy=legacy, wrapped=wrapped)
    with pytest.raises(CheckpointError, match="holds Python objects") as info:
        samkit.load_model(path, device="cpu")
    assert "trust" in str(info.value)
    with pytest.raises(CheckpointError, match="holds Python objects"):
        read_state_dict(path)
    assert not marker.exists()


def test_numpy_arrays_in_checkpoint_are_refused(tmp_path):
    path = tmp_path / "numpy.pth"
    torch.save({"image_encoder.pos_embed": np.zeros((1, 16, 16, 64), dtype=np.float32)}, path)
    with pytest.raises(CheckpointError, match="holds Python objects"):
        read_state_dict(path)


# --- files that are not checkpoints ----------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "sam_vit_b.pth"
    with pytest.raises(CheckpointError, match="No checkpoint file at") as info:
        samkit.load_model(path, device="cpu")
    assert "download" in str(info.value)


def test_directory(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder; give the path of the checkpoint file"):
        samkit.load_model(tmp_path, device="cpu")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_truncated_file(tmp_path, legacy):
    whole = tmp_path / "whole.pth"
    torch.save(random_state_dict(TINY_VIT, 0), whole, _use_new_zipfile_serialization=not legacy)
    data = whole.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged, incomplete") as info:
        samkit.load_model(cut, device="cpu")
    assert "download it again" in str(info.value)
    assert "Python objects" not in str(info.value)


@pytest.mark.parametrize(
    "content",
    [np.random.default_rng(0).bytes(4096), np.random.default_rng(1).bytes(100_000), b"hello world\n", b""],
    ids=["random-4k", "random-100k", "text", "empty"],
)
def test_garbage_file(tmp_path, content):
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a checkpoint at all") as info:
        samkit.load_model(path, device="cpu")
    assert "Python objects" not in str(info.value)


@pytest.mark.parametrize(
    ("obj", "kind"),
    [
        ([torch.zeros(3), torch.ones(2)], "list"),
        (torch.zeros(4, 4), "Tensor"),
        ({1: torch.zeros(2)}, "entries other than name -> tensor"),
        ({"image_encoder.pos_embed": torch.zeros(2), "epoch": 3}, "entries other than name -> tensor"),
        ("sam_vit_b", "str"),
    ],
    ids=["list", "tensor", "int-keys", "non-tensor-value", "string"],
)
def test_file_without_a_state_dict(tmp_path, obj, kind):
    path = tmp_path / "odd.pth"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="does not hold a state dict") as info:
        read_state_dict(path)
    assert kind in str(info.value)
    assert "vit_b" in str(info.value)  # says what would load


SAM2_LIKE = {
    "image_encoder.trunk.pos_embed": (1, 144, 7, 7),
    "image_encoder.trunk.patch_embed.proj.weight": (144, 3, 7, 7),
    "image_encoder.trunk.blocks.0.norm1.weight": (144,),
    "image_encoder.trunk.blocks.0.attn.qkv.weight": (432, 144),
    "image_encoder.neck.convs.0.conv.weight": (256, 1152, 1, 1),
    "memory_attention.layers.0.self_attn.q_proj.weight": (256, 256),
    "sam_prompt_encoder.no_mask_embed.weight": (1, 256),
    "sam_mask_decoder.iou_token.weight": (1, 256),
}
RESNET_LIKE = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.weight": (64,),
    "bn1.running_var": (64,),
    "layer1.0.conv1.weight": (64, 64, 3, 3),
    "fc.weight": (1000, 2048),
    "fc.bias": (1000,),
}


@pytest.mark.parametrize(
    ("shapes", "wrapper"), [(SAM2_LIKE, "model"), (RESNET_LIKE, None)], ids=["sam2-like", "torchvision-like"]
)
def test_other_architecture(tmp_path, shapes, wrapper):
    state = {k: torch.zeros(s) for k, s in shapes.items()}
    path = tmp_path / "other.pt"
    torch.save({wrapper: state} if wrapper else state, path)
    with pytest.raises(CheckpointError, match="is not a checkpoint of a supported architecture") as info:
        samkit.load_model(path, device="cpu")
    message = str(info.value)
    assert "vit_b" in message and "vit_t" in message  # what would load
    assert next(iter(sorted(shapes))) in message  # what the file holds


def test_empty_state_dict(tmp_path):
    path = tmp_path / "empty.pt"
    torch.save({}, path)
    with pytest.raises(CheckpointError, match="no keys at all"):
        samkit.load_model(path, device="cpu")


def test_missing_and_unexpected_key_are_named():
    state = random_state_dict(TINY_VIT, 0)
    removed = "mask_decoder.transformer.layers.1.norm3.bias"
    added = "mask_decoder.adapter.weight"
    del state[removed]
    state[added] = torch.zeros(3)
    with pytest.raises(CheckpointError) as info:
        model_from_state_dict(state, source="my.pth")
    message = str(info.value)
    assert message.startswith("my.pth")
    assert f"missing keys: {removed}" in message
    assert f"unexpected keys: {added}" in message


def test_key_with_wrong_shape_is_named(tmp_path):
    state = random_state_dict(TINY_VIT, 0)
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 128)
    path = tmp_path / "bad_shape.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="wrong shapes") as info:
        samkit.load_model(path, device="cpu")
    assert "mask_decoder.iou_token.weight (1, 128) (expected (1, 256))" in str(info.value)


def test_missing_key_the_architecture_is_read_from():
    state = random_state_dict(TINY_VIT, 0)
    del state["image_encoder.blocks.1.attn.rel_pos_h"]
    with pytest.raises(CheckpointError, match="image_encoder.blocks.1.attn.rel_pos_h"):
        model_from_state_dict(state)


def test_shapes_that_do_not_fit_together():
    state = random_state_dict(TINY_VIT, 0)
    # a neck that puts out 128 channels cannot feed the 256-channel decoder
    state["image_encoder.neck.0.weight"] = torch.zeros(128, 64, 1, 1)
    state["image_encoder.neck.1.weight"] = torch.zeros(128)
    with pytest.raises(CheckpointError, match="shapes that do not fit together") as info:
        model_from_state_dict(state)
    assert "out_chans 128" in str(info.value)


def test_encoder_without_blocks():
    state = {k: v for k, v in random_state_dict(TINY_VIT, 0).items() if ".blocks." not in k}
    with pytest.raises(CheckpointError, match="describe no valid model"):
        model_from_state_dict(state)


def test_checkpoint_error_is_a_samkit_error():
    assert issubclass(CheckpointError, SamkitError)
    assert samkit.CheckpointError is CheckpointError



# --- device and precision --------------------------------------------------------------------


def test_resolve_device_auto_is_cpu_here():
    assert not torch.cuda.is_available()
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device() == torch.device("cpu")


def test_resolve_device_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1)])
def test_resolve_device_cuda_without_gpu(device):
    with pytest.raises(SamkitError, match="no CUDA GPU.*device='cpu'"):
        resolve_device(device)


def test_resolve_device_mps_without_apple_gpu():
    with pytest.raises(SamkitError, match="no Apple GPU"):
        resolve_device("mps")


@pytest.mark.parametrize("device", ["garbage", "gpu", "", "cpu:x"])
def test_resolve_device_garbage(device):
    with pytest.raises(SamkitError, match="Unknown device.*'auto', 'cpu', 'cuda' or 'mps'"):
        resolve_device(device)


def test_load_model_refuses_missing_gpu_before_reading(tmp_path):
    # The file does not exist; the device is checked first, so the device error is the one raised.
    with pytest.raises(SamkitError, match="no CUDA GPU"):
        samkit.load_model(tmp_path / "absent.pth", device="cuda")


def test_resolve_precision():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == torch.float32
    assert resolve_precision("bf16", cpu) == torch.bfloat16
    expected = torch.bfloat16 if native_bf16(cpu) else torch.float32
    assert resolve_precision("auto", cpu) == expected


@pytest.mark.parametrize("native", [True, False])
def test_resolve_precision_auto_follows_hardware(monkeypatch, native):
    monkeypatch.setattr(samkit.device, "native_bf16", lambda device: native)
    expected = torch.bfloat16 if native else torch.float32
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("fp32", torch.device("cpu")) == torch.float32


@pytest.mark.parametrize("precision", ["fp16", "FP32", "float32", "", "bfloat16"])
def test_resolve_precision_invalid(precision):
    with pytest.raises(SamkitError, match="Unknown precision.*auto, fp32, bf16"):
        resolve_precision(precision, torch.device("cpu"))
