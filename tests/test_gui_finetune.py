"""A fine-tune that does not improve the model says so, and leaves the model in use as it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from napari.utils.notifications import notification_manager

from samkit.plugin._train_widget import TrainWidget
from samkit.train import TrainResult

WAIT_MS = 300_000


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def notes():
    seen: list[str] = []

    def keep(notification):
        seen.append(str(notification.message))

    notification_manager.notification_ready.connect(keep)
    yield seen
    notification_manager.notification_ready.disconnect(keep)


def _press(viewer, key: str) -> None:
    viewer.window._qt_viewer._key_map_handler.press_key(key)


def test_a_fine_tune_that_never_improves_says_so_and_keeps_the_model_in_use(
    make_napari_viewer, qtbot, tiny_checkpoint, tmp_path, notes
):
    from samkit import synthetic

    viewer = make_napari_viewer()
    image, truth = synthetic.nuclei((96, 96), n=6, seed=3)
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(truth, name="truth")
    widget = TrainWidget(viewer)
    qtbot.addWidget(widget)
    widget.picker.add_file(tiny_checkpoint)
    widget.picker.device.setCurrentText("cpu")
    with qtbot.waitSignal(widget.picker.loaded, timeout=WAIT_MS):
        widget.picker.load()
    in_use, name = widget.segmenter.model, widget.segmenter.model_name
    widget.images.setCurrentText("nuclei")
    widget.labels.setCurrentText("truth")
    widget.epochs.setValue(1)
    widget.output.setText(str(tmp_path / "tuned"))
    widget.lr.setText("fast")
    _press(viewer, "Shift-T")
    assert any("learning rate is a positive number" in note for note in notes) and widget.job is None
    # Far too high a learning rate: the one epoch ends worse than the start.
    widget.lr.setText("1")
    with qtbot.waitSignal(widget.finished, timeout=WAIT_MS):
        _press(viewer, "Shift-T")
    result = widget.result
    assert result is not None and result.best_epoch == 0 and not result.improved
    assert result.settings["lr"] == 1.0
    text = widget.status.text()
    assert "did not improve" in text and "starting weights" in text and "more epochs" in text
    assert "now the model in use" not in text and f"{Path(name).name} stays the model in use" in text
    assert widget.segmenter.model is in_use and widget.segmenter.model_name == name
    assert widget.picker.models.findData(str(result.model_path)) < 0
    assert json.loads((tmp_path / "tuned" / "model.json").read_text())["improved"] is False


def _result(history: list[dict], best_epoch: int, **settings) -> TrainResult:
    out = Path("out")
    return TrainResult(out, out / "model.pth", out / "model.json", out / "log.csv", out / "train_state.pt",
                       best_epoch, None, len(history) - 1, 3, "completed", history, settings=settings)


def test_the_verdict_names_the_numbers_and_what_to_try():
    rows = [{"epoch": e, "val_loss": v, "train_loss": None if e == 0 else 0.2, "val_miou": m}
            for e, (v, m) in enumerate([(0.115, 0.5), (0.13, 0.48), (0.121, 0.49)])]
    verdict = _result(rows, 0, mode="decoder", lr=1e-4).verdict()
    assert "never went below the starting model's (0.115; the best epoch after it reached 0.121)" in verdict
    assert "model.pth holds the starting weights" in verdict
    assert "more epochs (this run: 2)" in verdict and "(this run: 0.0001)" in verdict and "mode 'full'" in verdict
    assert "mode 'full'" not in _result(rows, 0, mode="full", lr=1e-5).verdict()
    better = [dict(rows[0]), {**rows[1], "val_loss": 0.1, "val_miou": 0.6}]
    assert _result(better, 1).verdict() == (
        "Best epoch 1 of 1: validation loss 0.115 before training, 0.1 after; one-click mIoU 0.500 -> 0.600."
    )
    assert "No epoch was completed" in _result(rows[:1], 0).verdict()
