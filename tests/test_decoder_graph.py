"""Live predictions through traced graphs: same results as op by op, one graph per layout, a fallback."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from helpers import TINY_VIT, random_state_dict

from samkit import Predictor, decoder_graph
from samkit.model import build_sam

IMAGE = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
LOW_RES_MASK = np.random.default_rng(1).normal(0, 4, (1, 64, 64)).astype(np.float32)
CLICK = np.array([[120.0, 80.0]])
BOX = np.array([30.0, 20.0, 180.0, 150.0])
PROMPTS = {
    "one click": {"point_coords": CLICK, "point_labels": np.array([1])},
    "two clicks": {"point_coords": np.array([[120.0, 80.0], [40.0, 30.0]]), "point_labels": np.array([1, 0])},
    "box": {"box": BOX},
    "click and box": {"point_coords": CLICK, "point_labels": np.array([1]), "box": BOX},
    "click and mask": {"point_coords": CLICK, "point_labels": np.array([1]), "mask_input": LOW_RES_MASK},
}


def _model():
    model = build_sam(TINY_VIT)
    model.load_state_dict(random_state_dict(TINY_VIT))
    return model.eval()


@pytest.fixture(scope="module")
def predictors():
    model = _model()
    op_by_op, graph = Predictor(model, cache=False), Predictor(model, cache=False, graph=True)
    op_by_op.set_image(IMAGE)
    graph.set_image(IMAGE)
    return op_by_op, graph


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_graph_gives_the_same_masks_as_op_by_op(predictors, name, multimask):
    op_by_op, graph = predictors
    expected = op_by_op.predict(**PROMPTS[name], multimask_output=multimask, return_logits=True)
    found = graph.predict(**PROMPTS[name], multimask_output=multimask, return_logits=True)
    assert found[0].shape == expected[0].shape == ((3 if multimask else 1), 200, 300)
    for got, want in zip(found, expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert decoder_graph._GRAPHS[graph.model], "the graph path was not taken"


def test_one_graph_per_layout_reused_across_images():
    model = _model()
    predictor = Predictor(model, cache=False, graph=True)
    predictor.set_image(IMAGE)
    predictor.predict(**PROMPTS["one click"])
    predictor.predict(point_coords=np.array([[10.0, 190.0]]), point_labels=np.array([0]))
    assert len(decoder_graph._GRAPHS[model]) == 1
    other = Predictor(model, cache=False, graph=True)
    other.set_image(IMAGE[::-1].copy())
    other.predict(**PROMPTS["one click"])
    assert len(decoder_graph._GRAPHS[model]) == 1
    predictor.predict(**PROMPTS["two clicks"])
    predictor.predict(**PROMPTS["one click"], multimask_output=False)
    assert len(decoder_graph._GRAPHS[model]) == 3


def test_graphs_do_not_keep_their_model_alive():
    model = _model()
    predictor = Predictor(model, cache=False, graph=True)
    predictor.set_image(IMAGE)
    predictor.predict(**PROMPTS["one click"])
    assert model in decoder_graph._GRAPHS
    gone = weakref.ref(model)
    del model, predictor
    gc.collect()
    assert gone() is None


def test_without_tracing_predictions_run_op_by_op_after_a_warning(predictors, monkeypatch):
    op_by_op, _ = predictors
    model = _model()
    predictor = Predictor(model, cache=False, graph=True)
    predictor.set_image(IMAGE)

    def fail(*args, **kwargs):
        raise RuntimeError("tracing is not available")

    monkeypatch.setattr(torch.jit, "trace", fail)
    with pytest.warns(RuntimeWarning, match="could not trace the mask decoder.*tracing is not available"):
        found = predictor.predict(**PROMPTS["box"], return_logits=True)
    expected = op_by_op.predict(**PROMPTS["box"], return_logits=True)
    np.testing.assert_allclose(found[0], expected[0], rtol=1e-4, atol=1e-4)
    assert decoder_graph._GRAPHS[model] == {next(iter(decoder_graph._GRAPHS[model])): None}


def test_prepare_graph_traces_the_layout_of_the_prompt_once_and_runs_nothing_else(monkeypatch):
    model = _model()
    traced = []
    trace = decoder_graph._trace
    monkeypatch.setattr(decoder_graph, "_trace", lambda module, inputs: traced.append(1) or trace(module, inputs))
    plain = Predictor(model, cache=False)
    plain.set_image(IMAGE)
    plain.prepare_graph(**PROMPTS["one click"])
    assert not traced and model not in decoder_graph._GRAPHS
    predictor = Predictor(model, cache=False, graph=True)
    predictor.set_image(IMAGE)
    predictor.prepare_graph(np.zeros((1, 2)), np.ones(1))
    predictor.prepare_graph(np.zeros((1, 2)), np.ones(1))
    assert len(traced) == 1
    predictor.predict(**PROMPTS["one click"])
    assert len(traced) == 1 and len(decoder_graph._GRAPHS[model]) == 1
