"""ONNX export: the prompt encoder and mask decoder with SAM's official ONNX interface, and the image encoder.

The decoder file takes and returns what SAM's web demo and ``segment_anything``'s
exporter use (all float32, batch 1):

- inputs ``image_embeddings`` (1, C, h, w); ``point_coords`` (1, N, 2) x, y in the model's
  input frame; ``point_labels`` (1, N): 1 positive, 0 negative, 2 box top-left, 3 box
  bottom-right, -1 padding; ``mask_input`` (1, 1, 4h, 4w) low-res logits; ``has_mask_input``
  (1,) 0 or 1; ``orig_im_size`` (2,) the image's (H, W). N may change from call to call.
  As in the official file, a prompt without a box needs a padding point (0, 0) with label -1.
- outputs ``masks`` (1, K, H, W) logits at the image size (threshold at 0), ``iou_predictions``
  (1, K) and ``low_res_masks`` (1, K, 4h, 4w); K is 4 (the single-mask token first, then the
  three multimask tokens), or 1 with ``return_single_mask``. The padding the image got in the
  square is cropped by ``orig_im_size`` at every call, not by the size the file was traced with.

Exporting needs the ``onnx`` package (``pip install onnx``); nothing here imports it, or
``torch.onnx``, before an export is asked for.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .automatic import stability_score
from .errors import OnnxExportError, ParameterError, SamkitError
from .io import check_output_folder
from .model import Sam, common
from .model.image_encoder import RelPosAttention

# The opsets torch's TorchScript-based exporter writes; the encoder's attention needs 14.
MIN_OPSET = 11
ENCODER_MIN_OPSET = 14
MAX_OPSET = 20
DEFAULT_OPSET = 17

DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
EXTRA_METRICS_OUTPUTS = ("masks", "iou_predictions", "stability_scores", "areas", "low_res_masks")
ENCODER_INPUTS = ("image",)
ENCODER_OUTPUTS = ("image_embeddings",)

# Score added per point beyond 2.5 to the single-mask token when one mask is returned: with three
# or more sparse points (padding included) the prompt is unambiguous, as in SAM's web demo.
SINGLE_MASK_BONUS = 1000.0

_EXPORT_LOCK = threading.Lock()


class SamOnnxModel(nn.Module):
    """Prompt encoder, mask decoder and mask upscaling of ``model`` with the official ONNX interface.

    Mirrors ``segment_anything.utils.onnx.SamOnnxModel``: ``return_single_mask`` keeps the best
    mask only (the single-mask token once there are three or more points, padding included);
    ``use_stability_score`` replaces the predicted IoU by the stability score of the low-res
    logits; ``return_extra_metrics`` returns ``masks, iou_predictions, stability_scores, areas,
    low_res_masks``. A model with MedSAM's preprocessing (image stretched to the square) maps the
    whole square to the image instead of cropping the padding.
    """

    def __init__(
        self,
        model: Sam,
        return_single_mask: bool = False,
        use_stability_score: bool = False,
        return_extra_metrics: bool = False,
        stability_score_offset: float = 1.0,
    ) -> None:
        super().__init__()
        self.img_size = _square_size(model)
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        self.stretched = model.preprocessing == "medsam"
        self.mask_threshold = float(model.mask_threshold)
        self.return_single_mask = return_single_mask
        self.use_stability_score = use_stability_score
        self.return_extra_metrics = return_extra_metrics
        self.stability_score_offset = stability_score_offset
        self.register_buffer("dense_pe", model.prompt_encoder.get_dense_pe(), persistent=False)
        bonus = torch.zeros(1, model.mask_decoder.num_mask_tokens, device=self.dense_pe.device)
        bonus[0, 0] = SINGLE_MASK_BONUS
        self.register_buffer("single_mask_bonus", bonus, persistent=False)

    @property
    def output_names(self) -> tuple[str, ...]:
        """The names of the outputs, in order."""
        return EXTRA_METRICS_OUTPUTS if self.return_extra_metrics else DECODER_OUTPUTS

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        encoder = self.prompt_encoder
        embedding = encoder.pe_layer.encode((coords + 0.5) / self.img_size)
        labels = labels[..., None]
        embedding = torch.where(labels == -1, encoder.not_a_point_embed.weight, embedding)
        for i, point_embedding in enumerate(encoder.point_embeddings):
            embedding = embedding + (labels == i).to(embedding.dtype) * point_embedding.weight
        return embedding

    def _embed_mask(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        encoder = self.prompt_encoder
        no_mask = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return has_mask_input * encoder.mask_downscaling(mask_input) + (1 - has_mask_input) * no_mask

    def _decode(
        self, image_embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All mask tokens' low-res logits and IoU (the decoder's plain convolutional upscaling)."""
        decoder = self.mask_decoder
        h, w = self.prompt_encoder.image_embedding_size
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)[None]
        tokens = torch.cat([output_tokens, sparse], dim=1)
        hs, keys = decoder.transformer(image_embeddings + dense, self.dense_pe, tokens)
        upscaled = decoder.output_upscaling(keys.transpose(1, 2).reshape(1, -1, h, w))
        hyper_in = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
        masks = (hyper_in @ upscaled.flatten(2)).view(1, -1, 4 * h, 4 * w)
        return masks, decoder.iou_prediction_head(hs[:, 0])

    def _select(
        self, masks: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The best mask and its score, by SAM's web-demo rule (see ``SINGLE_MASK_BONUS``)."""
        points = torch.ones_like(labels).sum(dim=1, keepdim=True)
        best = torch.argmax(scores + (points - 2.5) * self.single_mask_bonus, dim=1)
        return masks.index_select(1, best), scores.index_select(1, best)

    def _upscale(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        """SAM's two bilinear resizes: to the input square, crop the padding, to the image size."""
        size = self.img_size
        masks = F.interpolate(masks, (size, size), mode="bilinear", align_corners=False)
        if not self.stretched:
            # The resized image's size, rounded as the predictor rounds it (in double precision).
            image_size = orig_im_size.to(torch.float64)
            valid = torch.floor(image_size * (size / image_size.max()) + 0.5).to(torch.int64).clamp(min=1)
            masks = masks[..., : valid[0], : valid[1]]
        out = orig_im_size.to(torch.int64)
        return F.interpolate(masks, size=(out[0], out[1]), mode="bilinear", align_corners=False)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """``masks, iou_predictions, low_res_masks`` (or the five extra-metrics outputs)."""
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_mask(mask_input, has_mask_input)
        low_res, scores = self._decode(image_embeddings, sparse, dense)
        if self.use_stability_score:
            scores = stability_score(low_res, self.mask_threshold, self.stability_score_offset)
        if self.return_single_mask:
            low_res, scores = self._select(low_res, scores, point_labels)
        masks = self._upscale(low_res, orig_im_size)
        if self.return_extra_metrics:
            stability = stability_score(masks, self.mask_threshold, self.stability_score_offset)
            areas = (masks > self.mask_threshold).sum(dim=(-2, -1))
            return masks, scores, stability, areas, low_res
        return masks, scores, low_res


def _square_size(model: Sam) -> int:
    """The side of the model's square input; fails for any other shape."""
    size = model.image_encoder.img_size
    sizes = {size} if isinstance(size, int) else set(size)
    sizes |= set(model.prompt_encoder.input_image_size)
    grid = model.prompt_encoder.image_embedding_size
    if len(sizes) != 1 or grid[0] != grid[1]:
        raise OnnxExportError(
            f"Only models with a square input can be exported to ONNX; this one takes {size} "
            f"with a {grid[0]}x{grid[1]} embedding."
        )
    return sizes.pop()


def check_opset(opset: int, minimum: int = MIN_OPSET) -> int:
    """``opset`` if torch's exporter can write it for a part that needs at least ``minimum``."""
    if isinstance(opset, bool) or not isinstance(opset, int) or not minimum <= opset <= MAX_OPSET:
        needs = " (the image encoder's attention needs 14)" if minimum == ENCODER_MIN_OPSET else ""
        raise ParameterError(
            f"ONNX opset {opset!r} is not supported: use an opset from {minimum} to {MAX_OPSET}{needs}; "
            f"{DEFAULT_OPSET} is the default, as in SAM's own export."
        )
    return opset


def _plain_rel_pos_attention(attention: RelPosAttention, x: torch.Tensor) -> torch.Tensor:
    """``RelPosAttention.forward`` in one piece, without its preallocated, in-place score chunks."""
    b, h, w, dim = x.shape
    heads = attention.num_heads
    qkv = attention.qkv(x).reshape(b, h * w, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    grid = q.reshape(b, heads, h, w, -1)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid, attention.rel_pos_h[attention.rel_index])
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid, attention.rel_pos_w[attention.rel_index])
    bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, heads, h * w, h * w)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return attention.proj(out.transpose(1, 2).reshape(b, h, w, dim))


@contextmanager
def _traceable(module: nn.Module) -> Iterator[None]:
    """Plain operators in ``module`` while it is traced: no oneDNN calls, no in-place attention chunks.

    Everything is restored afterwards, so inference keeps its fast paths.
    """
    with _EXPORT_LOCK:
        onednn = common.ONEDNN_LINEAR
        # The exporter switches the module to eval mode and back; keep each submodule's own mode.
        modes = [(m, m.training) for m in module.modules()]
        patched = [m for m in module.modules() if isinstance(m, RelPosAttention)]
        common.ONEDNN_LINEAR = False
        for attention in patched:
            attention.forward = partial(_plain_rel_pos_attention, attention)
        try:
            yield
        finally:
            common.ONEDNN_LINEAR = onednn
            for attention in patched:
                del attention.forward
            for m, training in modes:
                m.training = training


def _require_exporter() -> None:
    try:
        import torch.onnx  # noqa: F401
    except ImportError as exc:
        raise OnnxExportError(f"This PyTorch installation cannot export to ONNX ({exc}).") from exc
    if importlib.util.find_spec("onnx") is None:
        raise OnnxExportError("Exporting to ONNX needs the onnx package: install it with `pip install onnx`.")


def _check_float32(model: Sam) -> None:
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float32}:
        found = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
        raise ParameterError(f"ONNX export needs a float32 model; this one has {found} weights: call model.float().")


def _merge_side_files(staged: Path) -> Path | None:
    """Gather the per-tensor files torch writes beside a model over 2 GB into one ``<name>.data`` file."""
    side_files = [p for p in staged.parent.iterdir() if p != staged]
    if not side_files:
        return None
    import onnx

    proto = onnx.load(str(staged))
    for side_file in side_files:
        side_file.unlink()
    location = f"{staged.name}.data"
    onnx.save_model(proto, str(staged), save_as_external_data=True, all_tensors_to_one_file=True, location=location)
    data = staged.parent / location
    return data if data.exists() else None


def _publish(staged: Path, path: Path) -> Path:
    """Move a finished export (and its weights file, if any) into place, each by one rename."""
    data = _merge_side_files(staged)
    if data is not None:
        os.replace(data, path.with_name(data.name))
    os.replace(staged, path)
    return path


def _export(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: str | os.PathLike,
    opset: int,
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> Path:
    """Trace ``module`` into an ONNX file at ``path``; nothing appears there unless the export succeeds."""
    path = check_output_folder(path)
    if path.is_dir():
        raise OnnxExportError(f"{path} is a folder: give the path of the .onnx file to write.")
    _require_exporter()
    device = inputs[0].device.type
    try:
        with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as staging:
            staged = Path(staging) / path.name
            with _traceable(module), torch.no_grad(), torch.autocast(device, enabled=False), warnings.catch_warnings():
                # The tracer's notes on Python values, the deprecation of this exporter, opset notes.
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module,
                    inputs,
                    str(staged),
                    dynamo=False,
                    export_params=True,
                    opset_version=opset,
                    do_constant_folding=True,
                    input_names=list(input_names),
                    output_names=list(output_names),
                    dynamic_axes=dynamic_axes or {},
                )
            return _publish(staged, path)
    except SamkitError:
        raise
    except OSError as exc:
        raise OnnxExportError(f"Could not write {path} ({exc}): check the folder is writable and has space.") from exc
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "no details"
        raise OnnxExportError(
            f"Exporting to {path} failed ({type(exc).__name__}: {reason}). Nothing was written."
        ) from exc


def export_decoder(
    model: Sam,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    return_single_mask: bool = False,
    use_stability_score: bool = False,
    return_extra_metrics: bool = False,
) -> Path:
    """Write the prompt encoder and mask decoder of ``model`` as an ONNX file (see the module's description).

    The number of points is a dynamic axis. Raises ``ParameterError`` for an opset outside
    11 to 20, ``OnnxExportError`` when the export fails; nothing is left at ``path`` then.
    """
    check_opset(opset, MIN_OPSET)
    _check_float32(model)
    wrapper = SamOnnxModel(model, return_single_mask, use_stability_score, return_extra_metrics)
    encoder = model.prompt_encoder
    h, w = encoder.image_embedding_size
    size = wrapper.img_size
    generator = torch.Generator().manual_seed(0)
    device = model.device
    inputs = (
        torch.randn(1, encoder.embed_dim, h, w, generator=generator).to(device),
        (torch.rand(1, 5, 2, generator=generator) * size).to(device),
        torch.tensor([[1.0, 0.0, 2.0, 3.0, -1.0]], device=device),
        torch.randn(1, 1, *encoder.mask_input_size, generator=generator).to(device),
        torch.ones(1, device=device),
        torch.tensor([0.75 * size, size], device=device),
    )
    axes = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    return _export(wrapper, inputs, path, opset, DECODER_INPUTS, wrapper.output_names, axes)


def export_encoder(model: Sam, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET) -> Path:
    """Write the image encoder of ``model`` as an ONNX file: ``image`` (1, 3, S, S) -> ``image_embeddings``.

    ``image`` is the preprocessed input (normalised, padded to the square, as ``Sam.preprocess``
    makes it; MedSAM's models take their [0, 1] stretched image). A model over 2 GB (ViT-H) gets
    its weights in a file beside it, ``<name>.data``. Needs opset 14 or later.
    """
    check_opset(opset, ENCODER_MIN_OPSET)
    _check_float32(model)
    size = _square_size(model)
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(model.device)
    return _export(model.image_encoder, (image,), path, opset, ENCODER_INPUTS, ENCODER_OUTPUTS)
