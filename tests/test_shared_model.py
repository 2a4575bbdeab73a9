"""Jobs on several threads that share one model: each gets its own correct result and its own progress."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from helpers import TINY_TINY_VIT, TINY_VIT, random_state_dict

from samkit.automatic import AutomaticMaskGenerator
from samkit.model import build_sam
from samkit.predictor import Predictor

ROUNDS = 8


def _model(config):
    model = build_sam(config)
    model.load_state_dict(random_state_dict(config, 0))
    return model.eval()


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (60 + 8 * i, 80, 3), dtype=np.uint8) for i in range(n)]


def _together(*jobs):
    """Run the jobs on threads of their own, started at once; their results (or the errors raised)."""
    barrier = threading.Barrier(len(jobs))
    results: list = [None] * len(jobs)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = jobs[i]()
        except Exception as error:  # noqa: BLE001 - the test reports it
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


@pytest.mark.parametrize("config", [TINY_VIT, TINY_TINY_VIT], ids=["vit", "tiny_vit"])
def test_two_threads_embedding_with_one_model_get_their_own_embedding_and_progress(config):
    model = _model(config)
    images = _images(2)
    expected = []
    for image in images:
        predictor = Predictor(model, precision="fp32")
        predictor.set_image(image)
        expected.append(predictor.get_image_embedding().clone())
    stages = len(getattr(model.image_encoder, "blocks", None) or model.image_encoder.layers)
    steps = [(done, stages + 1) for done in range(stages + 2)]

    def embed(i: int, seen: list):
        def job():
            predictor = Predictor(model, precision="fp32")
            predictor.set_image(images[i], progress=lambda done, total: seen.append((done, total)))
            return predictor.get_image_embedding()
        return job

    for _ in range(ROUNDS):
        seen: tuple[list, list] = ([], [])
        results = _together(embed(0, seen[0]), embed(1, seen[1]))
        for i in range(2):
            assert not isinstance(results[i], Exception), repr(results[i])
            torch.testing.assert_close(results[i], expected[i])
            assert seen[i] == steps
    assert all(not module._forward_hooks for module in model.modules())


def test_grid_mode_embedding_and_live_predictions_share_one_model():
    """Grid mode, an embedding and clicks on traced graphs at once, as the widgets run them."""
    model = _model(TINY_VIT)
    grid_image, image = _images(2)

    def grid(seen: list):
        def job():
            generator = AutomaticMaskGenerator(
                model, points_per_side=4, precision="fp32", progress=lambda done, total: seen.append((done, total))
            )
            return generator.generate(grid_image)
        return job

    def click():
        predictor = Predictor(model, precision="fp32", graph=True)
        predictor.set_image(image, progress=lambda done, total: None)
        return [predictor.predict(np.array([[20.0 + k, 30.0]]), np.ones(1))[1] for k in range(5)]

    alone_records = grid([])()
    alone_clicks = click()
    for _ in range(ROUNDS // 2):
        seen: list = []
        records, clicks = _together(grid(seen), click)
        assert not isinstance(records, Exception), repr(records)
        assert not isinstance(clicks, Exception), repr(clicks)
        assert [r["bbox"] for r in records] == [r["bbox"] for r in alone_records]
        for got, want in zip(clicks, alone_clicks):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert seen[-1] == (16, 16)
