"""The prompt encoder and mask decoder run as one traced TorchScript graph, for live predictions.

Run op by op from Python, a prediction takes Python's GIL back after each of its few hundred
operations. When another thread runs Python meanwhile (napari's GUI thread drawing the canvas),
each of those waits for it: on 2 cores a 30 ms ViT-B prediction was seen to take 80 ms beside
napari's window. A traced graph runs all its operations in C++ without taking the GIL.

One graph is traced per prompt layout (which prompts are given, and the shapes of every tensor)
on its first use, in about 0.3 s, and kept as long as the model. Where tracing fails (PyTorch has
deprecated ``torch.jit.trace``), predictions run op by op, after a warning.
"""

from __future__ import annotations

import threading
import warnings
import weakref

import torch
from torch import nn

from .model import ImageContext, Sam

_GRAPHS: weakref.WeakKeyDictionary[Sam, dict[tuple, torch.jit.ScriptModule | None]] = weakref.WeakKeyDictionary()
# Jobs on several threads share a model: one traces a new layout while the others wait for its graph.
_TRACING = threading.Lock()


class _Decode(nn.Module):
    """Prompt encoder then mask decoder, every tensor an argument; absent prompts are left out."""

    def __init__(self, model: Sam, present: tuple[bool, bool, bool], multimask_output: bool) -> None:
        super().__init__()
        self.model = model
        self.present = present
        self.multimask_output = multimask_output

    def forward(self, features: torch.Tensor, dense_pe: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        has_points, has_boxes, has_mask = self.present
        given = iter(tensors)
        points = (next(given), next(given)) if has_points else None
        boxes = next(given) if has_boxes else None
        mask = next(given) if has_mask else None
        context = None
        if not has_mask:
            keys, pos, keys_pe, image_keys, image_values, image_queries = given
            context = ImageContext(keys, pos, keys_pe, (image_keys, image_values), image_queries)
        sparse, dense = self.model.prompt_encoder(points, boxes, mask)
        return self.model.mask_decoder(
            features, dense_pe, sparse, dense, multimask_output=self.multimask_output, context=context
        )


def graph_for(
    model: Sam,
    features: torch.Tensor,
    dense_pe: torch.Tensor,
    context: ImageContext,
    points: tuple[torch.Tensor, torch.Tensor] | None,
    boxes: torch.Tensor | None,
    mask_input: torch.Tensor | None,
    multimask_output: bool,
) -> tuple[torch.jit.ScriptModule | None, list[torch.Tensor]]:
    """The graph of ``model`` for this batch of prompts' layout (traced now if new; ``None`` where
    it could not be traced) and the tensors to call it with.

    ``context`` is the image's :class:`ImageContext`; it is used when there is no mask prompt.
    """
    inputs = [features, dense_pe]
    if points is not None:
        inputs += points
    if boxes is not None:
        inputs.append(boxes)
    if mask_input is not None:
        inputs.append(mask_input)
    else:
        inputs += [context.keys, context.pos, context.keys_pe, *context.token_to_image, context.image_queries]
    present = (points is not None, boxes is not None, mask_input is not None)
    layout = (present, multimask_output, tuple((t.shape, t.dtype, t.device) for t in inputs))
    graphs = _GRAPHS.get(model)
    if graphs is None or layout not in graphs:
        with _TRACING:
            graphs = _GRAPHS.setdefault(model, {})
            if layout not in graphs:
                graphs[layout] = _trace(_Decode(model, present, multimask_output), inputs)
    return graphs[layout], inputs


def _trace(module: nn.Module, inputs: list[torch.Tensor]) -> torch.jit.ScriptModule | None:
    try:
        with warnings.catch_warnings():
            # The tracer warns that shapes become constants (each layout has a graph of its own)
            # and that it is deprecated (its successors need a C++ compiler on the user's machine).
            warnings.simplefilter("ignore")
            return torch.jit.trace(module, tuple(inputs), check_trace=False)
    except (AttributeError, RuntimeError, TypeError) as error:
        warnings.warn(
            f"samkit could not trace the mask decoder ({type(error).__name__}: {error}); "
            "live predictions run op by op, more slowly beside a busy GUI.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
