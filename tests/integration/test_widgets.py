"""The Train / Apply / Evaluate dock widgets in a real napari viewer (headless under pytest-xvfb).

The viewers come from ``make_napari_viewer_proxy``: the widgets get napari's ``PublicOnlyProxy``
with ``NAPARI_ENSURE_PLUGIN_MAIN_THREAD`` set, so any layer change made from a worker thread
raises, and these tests also check that the widgets only touch layers on the GUI thread.

Scans are the bundled Colin27 brain downsampled to 3 mm (``tests/data``): a skull-stripped brain
that the affine alignment to MNI152 handles. Networks use the ``test`` preset (tiny 3D nets on
a 32^3 grid) on CPU, a few steps each, no pseudo cases.
"""

from __future__ import annotations

import csv
import threading
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari.utils.notifications import NotificationSeverity, notification_manager  # noqa: E402
from qtpy.QtCore import Qt  # noqa: E402

from napari_girnet import api  # noqa: E402
from napari_girnet._napari import layers as girnet_layers  # noqa: E402
from napari_girnet._napari import workers  # noqa: E402
from napari_girnet._napari.apply_widget import (  # noqa: E402
    MODEL_BUNDLED,
    MODEL_UNTRAINED,
    ApplyWidget,
)
from napari_girnet._napari.evaluate_widget import EvaluateWidget  # noqa: E402
from napari_girnet._napari.train_widget import TrainWidget  # noqa: E402
from napari_girnet._napari.workers import last_trained  # noqa: E402
from napari_girnet.core.checkpoint import load_checkpoint  # noqa: E402
from napari_girnet.data.nifti import read_nifti, write_displacement  # noqa: E402
from napari_girnet.data.volume import Volume  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
RUN_TIMEOUT_MS = 180_000  # generous: the CI machine has 2 shared cores


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run torch single-threaded here: on the shared 2-core CI machine, 2 intra-op threads
    competing with other processes made a ``test`` preset step 5-15x slower (4-11 s vs
    0.6-0.8 s measured)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def brain() -> Volume:
    """Colin27 at 3 mm (61 x 73 x 61, canonical RAS, skull-stripped)."""
    return read_nifti(DATA / "colin27_3mm.nii.gz", name="colin27")


def add_volume(viewer, volume: Volume, name: str, kind: str = "image"):
    data, kwargs, layer_type = girnet_layers.volume_to_layer_data(volume, name, kind)
    return viewer.add_layer(napari.layers.Layer.create(data, kwargs, layer_type))


def notifications_since(start: int, severity: NotificationSeverity | None = None) -> list[str]:
    records = notification_manager.records[start:]
    return [str(n.message) for n in records if severity is None or n.severity == severity]


def dock(viewer, widget) -> None:
    viewer.window.add_dock_widget(widget, area="right")


# ----------------------------------------------------------------------------- train
@pytest.mark.slow  # two real co-learning runs: ~110 s on a busy 2-core machine
def test_train_stop_resume(make_napari_viewer_proxy, qtbot, brain, tmp_path):
    viewer = make_napari_viewer_proxy()
    add_volume(viewer, brain, "scan")
    widget = TrainWidget(viewer)
    dock(viewer, widget)
    assert widget.scans.checked_names() == ["scan"]  # the only image is ticked by default
    assert widget.atlas.currentText() == "MNI152 (bundled)"
    assert widget.seed.value() == 0
    assert all(w.toolTip() for w in (widget.scans, widget.steps, widget.preview_every))

    widget.preset.setCurrentText("test")
    widget.steps.setValue(10)
    widget.pseudo_cases.setValue(0)
    widget.preview_every.setValue(3)
    widget.device.setCurrentText("cpu")
    run_dir = tmp_path / "run"
    widget.checkpoint_dir.setText(str(run_dir))

    steps: list[int] = []

    def on_report(item) -> None:
        steps.append(item.report.step)
        if item.report.step >= 4 and widget.stop_button.isEnabled():
            qtbot.mouseClick(widget.stop_button, Qt.MouseButton.LeftButton)

    widget.report_received.connect(on_report)
    with qtbot.waitSignal(widget.training_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        qtbot.mouseClick(widget.start_button, Qt.MouseButton.LeftButton)
        assert not widget.start_button.isEnabled()
        assert widget.stop_button.isEnabled()
    outcome = blocker.args[0]
    qtbot.waitUntil(lambda: widget.start_button.isEnabled(), timeout=10_000)

    # stopped by the Stop button after step 4 (the worker may have finished one more step)
    assert outcome.report.phase == "stopped"
    stopped_at = outcome.report.step
    assert 4 <= stopped_at < 10
    assert steps == list(range(1, stopped_at + 1))
    # the loss plot has points for each network (schedule reg, seg, seg, inp, inp, ...)
    for net in ("reg", "seg", "inp"):
        assert widget.plot.points(net), net
    assert widget.plot.points("reg")[0][0] == 1
    assert widget.progress_bar.value() == stopped_at
    assert "stopped" in widget.progress_label.text()
    # preview layers (made at step 3, updated in place at step 6 if the run got there)
    previews = [ly.name for ly in viewer.layers if ly.name.startswith("preview: ")]
    assert "preview: scan lesion probability" in previews
    preview = viewer.layers["preview: scan lesion probability"]
    np.testing.assert_allclose(preview.scale, viewer.layers["scan"].scale)
    # Stop left a loadable checkpoint at the stopped step, remembered for the Apply widget
    assert outcome.checkpoint == run_dir / "last.pt"
    assert load_checkpoint(outcome.checkpoint).step == stopped_at
    assert last_trained(viewer) == outcome.checkpoint

    # a second Start with the same folder resumes from that step; one more step, no previews
    resumed: list[int] = []
    widget.report_received.disconnect(on_report)
    widget.report_received.connect(lambda item: resumed.append(item.report.step))
    widget.steps.setValue(stopped_at + 1)
    widget.preview_every.setValue(0)
    with qtbot.waitSignal(widget.training_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        widget.start()
    assert resumed == [stopped_at + 1]
    second = blocker.args[0]
    assert second.report.phase == "finished" and second.steps_run == 1
    assert load_checkpoint(second.checkpoint).step == stopped_at + 1
    assert f"finished at step {stopped_at + 1}/{stopped_at + 1}" in widget.progress_label.text()
    # the plot kept the first run's points and continued
    assert widget.plot.points("reg")[0][0] == 1
    assert sum(len(widget.plot.points(n)) for n in ("reg", "seg", "inp")) == stopped_at + 1
    qtbot.waitUntil(lambda: widget.start_button.isEnabled(), timeout=10_000)


# ----------------------------------------------------------------------------- apply
@pytest.mark.slow  # a real registration: ~25 s on a busy 2-core machine
def test_apply_adds_result_layers(make_napari_viewer_proxy, qtbot, brain):
    viewer = make_napari_viewer_proxy()
    scan_layer = add_volume(viewer, brain, "scan")
    truth = np.zeros(brain.shape, dtype=np.uint8)
    truth[25:32, 30:38, 35:41] = 1
    add_volume(viewer, brain.with_array(truth, name="truth"), "truth", kind="labels")
    widget = ApplyWidget(viewer)
    dock(viewer, widget)
    assert widget.fine_tune_steps.value() == 0
    assert widget.stride.value() == 6
    # the cpu-2mm model ships and is the default; none ships for 'test', so it is not offered
    assert widget.preset.currentText() == "cpu-2mm"
    assert widget.model.currentText() == MODEL_BUNDLED
    widget.scan.setCurrentText("scan")
    widget.truth.setCurrentText("truth")
    widget.preset.setCurrentText("test")
    items = [widget.model.itemText(i) for i in range(widget.model.count())]
    assert MODEL_BUNDLED not in items and items[0] == MODEL_UNTRAINED
    widget.device.setCurrentText("cpu")
    widget.stride.setValue(4)
    before = {ly.name for ly in viewer.layers}
    start = len(notification_manager.records)

    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        widget.run()
        assert not widget.run_button.isEnabled()
    outcome = blocker.args[0]
    assert not outcome.cancelled
    qtbot.waitUntil(lambda: widget.run_button.isEnabled(), timeout=10_000)

    added = [ly for ly in viewer.layers if ly.name not in before]
    roles = {ly.metadata["girnet"]["role"]: ly for ly in added}
    assert set(roles) == {
        "lesion_probability",
        "lesion_mask",
        "inpainted",
        "atlas_to_scan",
        "scan_to_atlas",
        "deformation",
        "jacobian",
    }
    assert isinstance(roles["lesion_mask"], napari.layers.Labels)
    assert isinstance(roles["deformation"], napari.layers.Vectors)
    for role, layer in roles.items():
        prov = layer.metadata["girnet"]["provenance"]
        assert prov["input_layers"] == ["scan", "truth"]
        assert prov["widget"] == "Apply model"
        assert prov["vector_stride"] == 4
        if role == "scan_to_atlas":
            continue  # lives on the atlas grid
        np.testing.assert_allclose(layer.scale, scan_layer.scale, err_msg=role)
        np.testing.assert_allclose(layer.translate, scan_layer.translate, err_msg=role)
    assert roles["lesion_probability"].data.shape == scan_layer.data.shape
    # the message reports the lesion volume and the metrics against the truth layer
    infos = notifications_since(start, NotificationSeverity.INFO)
    assert any("lesion" in m and "mm³" in m and "Dice" in m and "HD95" in m for m in infos)
    # no bundled weights for 'test': the user was warned
    warnings = notifications_since(start, NotificationSeverity.WARNING)
    assert any("no weights are bundled" in m for m in warnings)


def test_apply_cancel_during_fine_tuning(make_napari_viewer_proxy, qtbot, brain):
    viewer = make_napari_viewer_proxy()
    add_volume(viewer, brain, "scan")
    widget = ApplyWidget(viewer)
    widget.preset.setCurrentText("test")
    widget.device.setCurrentText("cpu")
    widget.fine_tune_steps.setValue(20)
    widget.pseudo_cases.setValue(0)
    seen: list[int] = []
    stages: list[str] = []

    def cancel_on_first(event) -> None:
        stages.append(event.stage)
        if event.report is not None:
            seen.append(event.report.step)
            widget.cancel()

    widget.progress_received.connect(cancel_on_first)
    n_layers = len(viewer.layers)
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        widget.run()
    assert blocker.args[0].cancelled
    assert 1 <= len(seen) < 20
    assert "detect" not in stages  # stopped in fine-tuning, before the next stage
    assert len(viewer.layers) == n_layers
    qtbot.waitUntil(lambda: widget.run_button.isEnabled(), timeout=10_000)
    assert widget.status.text() == "cancelled"


# ----------------------------------------------------------------------------- evaluate
def _points(viewer, name: str, world_ras: np.ndarray, ids: list[str]):
    data, kwargs, layer_type = girnet_layers.world_to_points_data(ids, world_ras, None, name=name)
    return viewer.add_layer(napari.layers.Layer.create(data, kwargs, layer_type))


def test_evaluate_tre_dice_export(make_napari_viewer_proxy, qtbot, tmp_path):
    viewer = make_napari_viewer_proxy()
    moving = np.array([[10.0, -20.0, 5.0], [0.0, 0.0, 0.0], [-30.0, 12.5, 40.0]])
    ids = ["1", "2", "10"]
    fixed = moving + np.array([3.0, 4.0, 0.0])  # RAS mm
    _points(viewer, "moving", moving, ids)
    # same landmarks in another order: pairing must use the ids
    _points(viewer, "fixed", fixed[[2, 0, 1]], [ids[2], ids[0], ids[1]])
    widget = EvaluateWidget(viewer)
    dock(viewer, widget)
    widget.moving.setCurrentText("moving")
    widget.fixed.setCurrentText("fixed")

    with qtbot.waitSignal(widget.tre_done, timeout=30_000) as blocker:
        widget.compute_tre()
    tre = blocker.args[0]
    assert tre["per_landmark"] == pytest.approx({"1": 5.0, "2": 5.0, "10": 5.0})
    assert tre["mean"] == pytest.approx(5.0)
    table = widget.tre_table
    rows = [(table.item(r, 0).text(), table.item(r, 1).text()) for r in range(table.rowCount())]
    assert rows == [("1", "5.00"), ("2", "5.00"), ("10", "5.00"), ("mean ± SD", "5.00 ± 0.00")]

    # through a constant field on the fixed grid that maps fixed points onto the moving ones
    grid = Volume(np.zeros((20, 20, 20), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    disp_vox = np.zeros((3, 20, 20, 20), np.float32)
    disp_vox[0], disp_vox[1] = -1.5, -2.0  # (-3, -4, 0) mm
    field = write_displacement(tmp_path / "field.nii.gz", disp_vox, grid, convention="itk")
    widget.field.setText(str(field))
    with qtbot.waitSignal(widget.tre_done, timeout=30_000) as blocker:
        widget.compute_tre()
    assert blocker.args[0]["mean"] == pytest.approx(0.0, abs=1e-4)

    # Dice / HD95 of two known label layers (2 mm voxels)
    pred = np.zeros((10, 10, 10), np.uint8)
    truth = np.zeros((10, 10, 10), np.uint8)
    pred[2:6, 2:6, 2:6] = 1  # 64 voxels
    truth[2:6, 2:6, 4:8] = 1  # 64 voxels, 32 shared
    viewer.add_labels(pred, name="pred", scale=(2.0, 2.0, 2.0))
    viewer.add_labels(truth, name="truth", scale=(2.0, 2.0, 2.0))
    widget.pred.setCurrentText("pred")
    widget.truth.setCurrentText("truth")
    with qtbot.waitSignal(widget.masks_done, timeout=30_000) as blocker:
        widget.compute_masks()
    out = blocker.args[0]
    assert out["dice"] == pytest.approx(0.5)
    assert out["hd95_mm"] == pytest.approx(4.0)  # 2 voxels of 2 mm along the shifted axis
    assert widget.masks_table.item(0, 1).text() == "0.5000"

    path = widget.export_csv(tmp_path / "metrics.csv")
    assert path is not None and path.with_suffix(".json").is_file()
    with path.open() as fh:
        values = {row["metric"]: row["value"] for row in csv.DictReader(fh)}
    assert float(values["dice"]) == pytest.approx(0.5)
    assert float(values["tre_mm.mean"]) == pytest.approx(0.0, abs=1e-4)
    assert values["inputs.mask_pred"] == "pred"
    qtbot.waitUntil(lambda: widget.tre_button.isEnabled() and widget.masks_button.isEnabled())


def test_evaluate_load_landmarks(make_napari_viewer_proxy, qtbot, landmark_csvs):
    viewer = make_napari_viewer_proxy()
    widget = EvaluateWidget(viewer)
    layer = widget.load_landmarks(landmark_csvs.ras, "moving")
    assert isinstance(layer, napari.layers.Points)
    assert widget.moving.currentText() == layer.name
    ids, world = girnet_layers.points_to_world(layer)
    assert ids == landmark_csvs.ids
    np.testing.assert_allclose(world, landmark_csvs.world_ras)
    layer2 = widget.load_landmarks(landmark_csvs.brats, "fixed")
    assert widget.fixed.currentText() == layer2.name
    with qtbot.waitSignal(widget.tre_done, timeout=30_000) as blocker:
        widget.compute_tre()
    assert blocker.args[0]["max"] == pytest.approx(0.0, abs=1e-9)

    # unpairable ids: one error notification, the button comes back
    _points(viewer, "other", np.zeros((3, 3)), ["a", "b", "c"])
    widget.fixed.setCurrentText("other")
    start = len(notification_manager.records)
    with qtbot.waitSignal(widget.evaluation_failed, timeout=30_000):
        widget.compute_tre()
    errors = notifications_since(start, NotificationSeverity.ERROR)
    assert len(errors) == 1 and "landmark ids do not match" in errors[0]
    qtbot.waitUntil(widget.tre_button.isEnabled, timeout=5_000)


# ----------------------------------------------------------------------------- errors
def _boom(*args, **kwargs):
    raise ValueError("boom")


def test_train_error_notifies_and_recovers(make_napari_viewer_proxy, qtbot, brain, monkeypatch):
    monkeypatch.setattr(api, "fit", _boom)
    viewer = make_napari_viewer_proxy()
    add_volume(viewer, brain, "scan")
    widget = TrainWidget(viewer)
    widget.preset.setCurrentText("test")
    start = len(notification_manager.records)
    with qtbot.waitSignal(widget.training_failed, timeout=30_000) as blocker:
        widget.start()
    assert "boom" in blocker.args[0]
    qtbot.waitUntil(lambda: widget.start_button.isEnabled(), timeout=10_000)
    assert not widget.stop_button.isEnabled()
    errors = notifications_since(start, NotificationSeverity.ERROR)
    assert len(errors) == 1 and "boom" in errors[0] and "\n" not in errors[0]
    assert "failed" in widget.progress_label.text()
    viewer.add_image(np.zeros((4, 4, 4)), name="still usable")
    assert "still usable" in viewer.layers
    assert widget.scans.count() == 2  # the widget still follows the layer list


def test_apply_error_notifies_and_recovers(make_napari_viewer_proxy, qtbot, brain, monkeypatch):
    monkeypatch.setattr(api, "register_steps", _boom)
    viewer = make_napari_viewer_proxy()
    add_volume(viewer, brain, "scan")
    widget = ApplyWidget(viewer)
    widget.preset.setCurrentText("test")
    start = len(notification_manager.records)
    with qtbot.waitSignal(widget.run_failed, timeout=30_000):
        widget.run()
    qtbot.waitUntil(lambda: widget.run_button.isEnabled(), timeout=10_000)
    errors = notifications_since(start, NotificationSeverity.ERROR)
    assert len(errors) == 1 and "boom" in errors[0]
    viewer.add_image(np.zeros((4, 4, 4)), name="still usable")
    assert widget.scan.count() == 2


def test_apply_last_trained_without_training(make_napari_viewer_proxy, brain):
    viewer = make_napari_viewer_proxy()
    add_volume(viewer, brain, "scan")
    widget = ApplyWidget(viewer)
    widget.model.setCurrentText("last trained")
    start = len(notification_manager.records)
    widget.run()  # refused on the GUI thread, no worker
    assert widget.worker is None and widget.run_button.isEnabled()
    errors = notifications_since(start, NotificationSeverity.ERROR)
    assert any("no model was trained" in m for m in errors)


# ----------------------------------------------------------------------------- workers (no GUI)
class _FakeSession:
    """Stands in for api.FitSession: yields ``n`` step reports, stops on request."""

    def __init__(self, n: int = 3, delay: float = 0.0) -> None:
        self.n = n
        self.delay = delay
        self.stop = False
        self.prepared: list = []

    def __iter__(self):
        from napari_girnet.core.colearn import TrainingReport

        for step in range(1, self.n + 1):
            if self.stop:
                yield TrainingReport(step - 1, self.n, "stopped", float("nan"))
                return
            threading.Event().wait(self.delay)
            yield TrainingReport(step, self.n, "reg", 1.0 / step)
        yield TrainingReport(self.n, self.n, "finished", float("nan"))

    def request_stop(self) -> None:
        self.stop = True


def _train_job(tmp_path: Path) -> workers.TrainJob:
    return workers.TrainJob(
        scans=(),
        scan_names=("scan",),
        atlas="mni152",
        preset="test",
        steps=3,
        device="cpu",
        seed=0,
        checkpoint_dir=tmp_path,
        pseudo_cases=0,
        preview_every=0,
    )


def _drain(gen):
    items = []
    while True:
        try:
            items.append(next(gen))
        except StopIteration as stop:
            return items, stop.value


def test_train_steps_stop_before_first_step(monkeypatch, tmp_path):
    monkeypatch.setattr(api, "fit", lambda *a, **k: _FakeSession())
    control = workers.TrainControl()
    control.request_stop()  # pressed Stop while the scans were being prepared
    items, outcome = _drain(workers.train_steps(_train_job(tmp_path), control))
    assert items == [] and outcome.report is None and outcome.steps_run == 0


def test_train_steps_stop_and_finish(monkeypatch, tmp_path):
    session = _FakeSession(n=5)
    monkeypatch.setattr(api, "fit", lambda *a, **k: session)
    control = workers.TrainControl()
    gen = workers.train_steps(_train_job(tmp_path), control)
    first = next(gen)
    assert first.report.step == 1 and first.preview is None
    control.request_stop()
    rest, outcome = _drain(gen)
    assert rest == []
    assert outcome.report.phase == "stopped" and outcome.report.step == 1
    assert outcome.steps_run == 1
    assert session.stop


def test_task_errors_are_not_runtime_errors(monkeypatch, tmp_path):
    """superqt drops a RuntimeError escaping a generator worker (no errored/finished signal)."""

    def torch_like_failure(*args, **kwargs):
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")

    monkeypatch.setattr(api, "fit", torch_like_failure)
    with pytest.raises(workers.TaskError) as info:
        _drain(workers.train_steps(_train_job(tmp_path), workers.TrainControl()))
    assert not isinstance(info.value, RuntimeError)
    assert str(info.value) == "GIRNet training failed: RuntimeError: CUDA out of memory."
    assert isinstance(info.value.__cause__, RuntimeError)


class _FakeRegistration:
    """Stands in for a RegistrationSession: ``n`` fine-tuning events, then "result"."""

    def __init__(self, n: int = 3, delay: float = 0.0):
        self.n, self.delay = n, delay
        self.calls: list[int] = []
        self.result = None
        self._cancel = threading.Event()

    def cancel_with(self, event: threading.Event) -> None:
        self._cancel = event

    def __iter__(self):
        from napari_girnet.core.colearn import TrainingReport

        yield api.StageEvent("prepare", 0, 3, 1.0, 0.1, True)
        for step in range(1, self.n + 1):
            if self._cancel.is_set():
                raise api.RegistrationCancelled("cancelled")
            self.calls.append(step)
            threading.Event().wait(self.delay)
            report = TrainingReport(step, self.n, "seg", 0.5)
            yield api.StageEvent("fine_tune", 1, 3, step / self.n, 0.1, False, report=report)
        self.result = "result"


def test_apply_steps_progress_and_cancel(monkeypatch, brain):
    fake = _FakeRegistration()
    seen_kwargs: dict = {}

    def fake_register_steps(scan, **kwargs):
        seen_kwargs.update(kwargs)
        return fake

    monkeypatch.setattr(api, "register_steps", fake_register_steps)
    job = workers.ApplyJob(
        scan=brain,
        scan_name="scan",
        atlas="mni152",
        model=None,
        preset="test",
        fine_tune_steps=3,
        pseudo_cases=0,
        refine=False,
        truth=None,
        device="cpu",
        seed=0,
    )
    items, outcome = _drain(workers.apply_steps(job, threading.Event()))
    assert [e.stage for e in items] == ["prepare", "fine_tune", "fine_tune", "fine_tune"]
    assert [e.report.step for e in items[1:]] == [1, 2, 3]
    assert outcome.result == "result" and not outcome.cancelled
    assert seen_kwargs["inference"] == {"refine": False, "detector": "auto"}

    fake.calls.clear()
    cancel = threading.Event()
    gen = workers.apply_steps(job, cancel)
    assert next(gen).stage == "prepare"
    assert next(gen).report.step == 1
    cancel.set()  # the session stops before its next step
    items, outcome = _drain(gen)
    assert outcome.cancelled and outcome.result is None
    assert items == [] and fake.calls == [1]


def test_activity_dock_cancel(make_napari_viewer_proxy, qtbot, brain, monkeypatch, tmp_path):
    """worker.quit() (the activity dock's cancel) leaves both widgets idle and stops the work."""

    viewer = make_napari_viewer_proxy()
    add_volume(viewer, brain, "scan")

    # Train: a fake session that would run 1000 steps
    monkeypatch.setattr(api, "fit", lambda *a, **k: _FakeSession(n=1000, delay=0.02))
    train = TrainWidget(viewer)
    train.checkpoint_dir.setText(str(tmp_path / "run"))
    train.preview_every.setValue(0)
    train.report_received.connect(lambda item: train.worker and train.worker.quit())
    with qtbot.waitSignal(train.training_finished, timeout=30_000) as blocker:
        train.start()
    assert blocker.args[0].report is None
    qtbot.waitUntil(train.start_button.isEnabled, timeout=10_000)
    assert "cancelled" in train.progress_label.text()

    # Apply: the abandoned generator stops the registration session with it
    fake = _FakeRegistration(n=999, delay=0.02)
    calls = fake.calls
    monkeypatch.setattr(api, "register_steps", lambda *a, **k: fake)
    apply = ApplyWidget(viewer)
    apply.fine_tune_steps.setValue(999)
    apply.progress_received.connect(lambda r: apply.worker and apply.worker.quit())
    with qtbot.waitSignal(apply.run_finished, timeout=30_000) as blocker:
        apply.run()
    assert blocker.args[0].cancelled
    qtbot.waitUntil(apply.run_button.isEnabled, timeout=10_000)
    qtbot.wait(300)  # the helper raises RegistrationCancelled at its next step
    n = len(calls)
    qtbot.wait(300)
    assert len(calls) == n < 100  # and stays stopped


def test_preview_layers_update_in_place(make_napari_viewer_proxy, brain):
    viewer = make_napari_viewer_proxy()
    volumes = {"lesion_probability": brain.with_array(np.zeros(brain.shape, np.float32))}
    (first,) = workers.add_or_update_layers(
        viewer, girnet_layers.preview_to_layers(volumes, "scan", brain), update=True
    )
    first.contrast_limits = (0.0, 0.5)  # a display setting the user changed
    volumes = {"lesion_probability": brain.with_array(np.ones(brain.shape, np.float32))}
    (second,) = workers.add_or_update_layers(
        viewer, girnet_layers.preview_to_layers(volumes, "scan", brain), update=True
    )
    assert len(viewer.layers) == 1 and second.name == first.name
    assert np.all(np.asarray(viewer.layers[0].data) == 1.0)
    assert tuple(viewer.layers[0].contrast_limits) == (0.0, 0.5)


def test_loss_plot_redraw_is_throttled(qtbot):
    from napari_girnet._napari.loss_plot import LossPlot

    plot = LossPlot(max_fps=5)
    qtbot.addWidget(plot)
    for step in range(1, 201):
        plot.add_point(("reg", "seg", "inp")[step % 3], step, 1.0 / step)
    plot.add_point("reg", 201, float("nan"))  # skipped
    assert plot.draw_count == 0  # nothing drawn synchronously
    qtbot.waitUntil(lambda: plot.draw_count == 1, timeout=2_000)
    qtbot.wait(300)
    assert plot.draw_count == 1  # 200 points, one redraw
    assert len(plot.points("reg")) == 66 and plot.points("reg")[-1][0] == 198
    line_x = plot._lines["seg"].get_xdata()
    assert len(line_x) == len(plot.points("seg"))


@pytest.mark.parametrize(
    ("display_name", "cls"),
    [
        ("Train (co-learning)", TrainWidget),
        ("Apply model", ApplyWidget),
        ("Evaluate", EvaluateWidget),
    ],
)
def test_widgets_dock_from_the_manifest(make_napari_viewer_proxy, display_name, cls):
    viewer = make_napari_viewer_proxy()
    _, widget = viewer.window.add_plugin_dock_widget("napari-girnet", display_name)
    assert isinstance(widget, cls)


def test_apply_every_selected_layer_runs_one_after_another(
    make_napari_viewer_proxy, qtbot, brain, monkeypatch
):
    """With "every selected Image layer", each selected scan gets its own run, in layer order;
    a failing scan does not stop the next one; unselected layers and the atlas are skipped."""
    seen: list[str] = []

    def failing_register_steps(scan, *args, **kwargs):
        seen.append(scan.name)
        raise ValueError(f"{scan.name}: not a brain")

    monkeypatch.setattr(api, "register_steps", failing_register_steps)
    viewer = make_napari_viewer_proxy()
    first = add_volume(viewer, brain.with_array(brain.array, name="first"), "first")
    add_volume(viewer, brain.with_array(brain.array, name="unselected"), "unselected")
    second = add_volume(viewer, brain.with_array(brain.array, name="second"), "second")
    widget = ApplyWidget(viewer)
    widget.preset.setCurrentText("test")
    widget.all_selected.setChecked(True)
    viewer.layers.selection = {first, second}
    assert [ly.name for ly in widget.scan_layers()] == ["first", "second"]
    failures: list[str] = []
    widget.run_failed.connect(failures.append)
    widget.run()
    qtbot.waitUntil(lambda: len(failures) == 2, timeout=60_000)
    qtbot.waitUntil(lambda: widget.run_button.isEnabled(), timeout=10_000)
    assert len(seen) == 2 and "first" in failures[0] and "second" in failures[1]
    assert widget._queue == []

    # nothing selected: a one-line error, nothing runs
    viewer.layers.selection = set()
    start = len(notification_manager.records)
    widget.run()
    errors = notifications_since(start, NotificationSeverity.ERROR)
    assert len(errors) == 1 and "select one or more Image layers" in errors[0]
    assert len(seen) == 2


# ----------------------------------------------------------------------------- pair mode
def _fake_pair(moving: Volume, fixed: Volume, shift_mm: float = 2.0):
    """A PairResult-like object with known outputs: the moving-side result on ``moving``'s grid,
    fixed-grid outputs on ``fixed``'s grid, and a constant field fixed→moving of ``shift_mm``
    along +R (every fixed point p maps to the moving point p + (shift_mm, 0, 0))."""
    from types import SimpleNamespace

    import torch

    from napari_girnet.core.config import preset
    from napari_girnet.core.model import Prediction
    from napari_girnet.data.atlas import Atlas
    from napari_girnet.data.preprocess import AffineAlignment, PreparedScan

    shape = moving.shape
    atlas_img = Volume(np.full((6, 7, 5), 0.5, np.float32), np.diag([4.0, 4.0, 4.0, 1.0]))
    atlas = Atlas(image=atlas_img, mask=atlas_img.with_array(np.ones((6, 7, 5), bool)), preset="t")
    lesion = np.zeros(shape, np.uint8)
    lesion[25:30, 30:36, 30:34] = 1
    t = torch.zeros((1, 1, 4, 4, 4))
    result = api.RegistrationResult(
        scan=moving,
        atlas=atlas,
        prepared=PreparedScan(
            native=moving,
            native_mask=moving.with_array(np.asarray(moving.array) > 0),
            alignment=AffineAlignment(np.eye(4)),
            image=atlas_img,
            mask=atlas.mask,
        ),
        prediction=Prediction(
            t, t > 0, t, t.repeat(1, 3, 1, 1, 1), t.repeat(1, 3, 1, 1, 1), t, t, t + 1
        ),
        lesion_probability=moving.with_array(lesion.astype(np.float32)),
        lesion_mask=moving.with_array(lesion),
        inpainted=moving.with_array(np.asarray(moving.array, np.float32)),
        atlas_to_scan=moving.with_array(np.full(shape, 0.4, np.float32)),
        jacobian=moving.with_array(np.ones(shape, np.float32)),
        scan_to_atlas=atlas_img,
        field_atlas_to_scan=np.zeros((3, *shape), np.float32),
        field_scan_to_atlas=np.zeros((3, 6, 7, 5), np.float32),
        field_nonlinear=np.zeros((3, *shape), np.float32),
        config=preset("test"),
        checkpoint=None,
    )
    field = np.zeros((3, *fixed.shape), np.float32)
    field[0] = shift_mm
    fixed_lesion = np.zeros(fixed.shape, np.uint8)
    fixed_lesion[20:24, 30:34, 30:33] = 1
    return SimpleNamespace(
        registration=result,
        fixed=fixed,
        moved=fixed.with_array(np.asarray(fixed.array, np.float32) * 0.5),
        inpainted_on_fixed=fixed.with_array(np.asarray(fixed.array, np.float32)),
        lesion_mask_on_fixed=fixed.with_array(fixed_lesion),
        field_fixed_to_moving=field,
        field_moving_to_fixed=np.zeros((3, *shape), np.float32),
        jacobian_on_fixed=fixed.with_array(np.ones(fixed.shape, np.float32)),
        tre={"before": {"mean": 4.5, "n": 3}, "after": {"mean": 1.25, "n": 3}},
        save=lambda out_dir: None,
    )


def _follow_up(brain: Volume) -> Volume:
    """The same brain on another grid: LPS voxel order, cropped, origin moved (a follow-up)."""
    from nibabel import orientations as ornt

    canonical = brain.canonical()
    transform = ornt.ornt_transform(
        ornt.io_orientation(canonical.affine), ornt.axcodes2ornt(("L", "P", "S"))
    )
    array = ornt.apply_orientation(np.asarray(canonical.array), transform)[2:-3, 1:-2, 3:]
    affine = canonical.affine @ ornt.inv_ornt_aff(transform, canonical.shape)
    affine[:3, 3] += affine[:3, :3] @ np.array([2.0, 1.0, 3.0])  # the crop's first voxel
    affine[:3, 3] += (4.0, -3.0, 2.0)
    return Volume(np.ascontiguousarray(array, dtype=np.float32), affine, name="post")


class _PairRecorder:
    """A fake ``api.register_pair``: records its call and thread, reports ``n`` events through
    ``progress`` (honouring a cancel raised from it), returns :func:`_fake_pair`."""

    def __init__(self, n: int = 3, delay: float = 0.0) -> None:
        self.n, self.delay = n, delay
        self.calls: list[dict] = []
        self.events = 0

    def __call__(self, moving, fixed, model=None, **kwargs):
        self.calls.append(
            {"moving": moving, "fixed": fixed, "model": model, "thread": threading.current_thread()}
            | kwargs
        )
        progress = kwargs["progress"]
        for i in range(self.n):
            threading.Event().wait(self.delay)
            self.events += 1
            progress(api.StageEvent("predict", i, self.n, 1.0, 0.01, True))
        return _fake_pair(moving, fixed)


def _pair_viewer(make_napari_viewer_proxy, brain):
    viewer = make_napari_viewer_proxy()
    pre = add_volume(viewer, brain.with_array(brain.array, name="pre"), "pre")
    post = add_volume(viewer, _follow_up(brain), "post")
    widget = ApplyWidget(viewer)
    dock(viewer, widget)
    widget.preset.setCurrentText("test")
    widget.device.setCurrentText("cpu")
    widget.scan.setCurrentText("pre")
    return viewer, widget, pre, post


def test_apply_pair_mode_adds_layers_on_both_grids(
    make_napari_viewer_proxy, qtbot, brain, monkeypatch
):
    fake = _PairRecorder(n=3)
    monkeypatch.setattr(api, "register_pair", fake, raising=False)
    viewer, widget, pre, post = _pair_viewer(make_napari_viewer_proxy, brain)
    items = [widget.atlas.itemText(i) for i in range(widget.atlas.count())]
    assert items == ["MNI152 (bundled)", "pre", "post", "fixed scan: pre", "fixed scan: post"]
    assert not widget.pair_mode
    widget.atlas.setCurrentText("fixed scan: post")
    assert widget.pair_mode and widget.atlas.layer() is None
    assert widget.atlas.fixed_layer().name == "post"
    assert "pair mode" in widget.status.text()
    widget.stride.setValue(8)
    events: list = []
    widget.progress_received.connect(events.append)
    before = {ly.name for ly in viewer.layers}
    start = len(notification_manager.records)

    with qtbot.waitSignal(widget.run_finished, timeout=60_000) as blocker:
        widget.run()
        assert not widget.run_button.isEnabled()
    outcome = blocker.args[0]
    qtbot.waitUntil(widget.run_button.isEnabled, timeout=10_000)
    assert not outcome.cancelled and outcome.pair is not None
    assert outcome.result is outcome.pair.registration
    assert len(events) == 3 and all(e.stage == "predict" for e in events)

    # register_pair ran off the GUI thread with the layers' volumes and the widget's settings
    (call,) = fake.calls
    assert call["thread"] is not threading.main_thread()
    np.testing.assert_array_equal(call["moving"].array, np.asarray(pre.data).transpose(2, 1, 0))
    np.testing.assert_array_equal(call["fixed"].array, np.asarray(post.data).transpose(2, 1, 0))
    assert call["config"] == "test" and call["device"] == "cpu" and call["seed"] == 0
    assert call["inference"] == {"refine": True, "detector": "auto"}

    added = {ly.name: ly for ly in viewer.layers if ly.name not in before}
    on_fixed = {n: ly for n, ly in added.items() if n.endswith("(on post)")}
    on_moving = {n: ly for n, ly in added.items() if n.endswith("(on pre)")}
    assert set(on_fixed) == {
        "pre moved (on post)",
        "pre inpainted (on post)",
        "pre lesion mask (on post)",
        "pre deformation (on post)",
        "pre Jacobian (on post)",
    }
    assert {"pre lesion mask (on pre)", "pre deformation (on pre)"} <= set(on_moving)
    assert isinstance(on_fixed["pre lesion mask (on post)"], napari.layers.Labels)
    assert isinstance(on_fixed["pre deformation (on post)"], napari.layers.Vectors)
    for name, layer in on_fixed.items():
        np.testing.assert_allclose(layer.scale, post.scale, err_msg=name)
        np.testing.assert_allclose(layer.translate, post.translate, err_msg=name)
        prov = layer.metadata["girnet"]["provenance"]
        assert prov["input_layers"] == ["pre", "post"] and prov["mode"] == "pair"
        assert layer.metadata["girnet"]["grid"] == "fixed"
    for name, layer in on_moving.items():
        np.testing.assert_allclose(layer.scale, pre.scale, err_msg=name)
        np.testing.assert_allclose(layer.translate, pre.translate, err_msg=name)
    moved = on_fixed["pre moved (on post)"]
    assert moved.data.shape == post.data.shape
    # vectors subsampled with the widget's stride, 2 mm along +R in world, inside the brain
    vectors = on_fixed["pre deformation (on post)"]
    assert vectors.metadata["girnet"]["stride"] == 8
    data = np.asarray(vectors.data)
    assert 0 < len(data) < np.prod(post.data.shape) / 8**3 + 1
    w0 = np.array(vectors.data_to_world(data[0, 0]))
    w1 = np.array(vectors.data_to_world(data[0, 0] + data[0, 1]))
    np.testing.assert_allclose((w1 - w0)[::-1], [2.0, 0.0, 0.0], atol=1e-5)
    # the result is remembered for the Evaluate widget; the message has the pair's TRE
    assert workers.last_pair(viewer)[1:] == ("pre", "post")
    assert widget.last_pair is outcome.pair
    infos = notifications_since(start, NotificationSeverity.INFO)
    assert any("pre → post" in m and "TRE 1.25 mm (before 4.50 mm)" in m for m in infos)
    # result layers are templates at most, never offered as a fixed scan
    items = [widget.atlas.itemText(i) for i in range(widget.atlas.count())]
    assert "pre moved (on post)" in items
    assert [i for i in items if i.startswith("fixed scan: ")] == [
        "fixed scan: pre",
        "fixed scan: post",
    ]


def test_apply_pair_mode_refusals(make_napari_viewer_proxy, qtbot, brain, monkeypatch):
    from napari_girnet._napari.apply_widget import fixed_layer_problem

    fake = _PairRecorder()
    monkeypatch.setattr(api, "register_pair", fake, raising=False)
    viewer, widget, pre, post = _pair_viewer(make_napari_viewer_proxy, brain)
    viewer.add_image(np.zeros((20, 30), np.float32), name="flat")
    labels = viewer.add_labels(np.zeros((4, 5, 6), np.uint8), name="seg")

    def refused(choice: str) -> str:
        widget.atlas.setCurrentText(choice)
        assert widget.atlas.currentText() == choice
        start = len(notification_manager.records)
        widget.run()
        assert widget.worker is None and widget.run_button.isEnabled()
        (error,) = notifications_since(start, NotificationSeverity.ERROR)
        assert "\n" not in error
        return error

    assert "'pre' is the moving scan itself" in refused("fixed scan: pre")
    assert "'flat' is 2D but the moving scan 'pre' is 3D" in refused("fixed scan: flat")
    assert "fixed scan: seg" not in [widget.atlas.itemText(i) for i in range(widget.atlas.count())]
    problem = fixed_layer_problem(pre, labels)
    assert problem is not None and "'seg' is a Labels layer" in problem
    with pytest.raises(ValueError, match="'seg' is a Labels layer"):
        widget.pair_job(pre, labels)
    assert fixed_layer_problem(pre, post) is None
    # pair mode and the queue of every selected layer are exclusive
    widget.all_selected.setChecked(True)
    viewer.layers.selection = {pre}
    error = refused("fixed scan: post")
    assert "pair mode" in error and "every selected Image layer" in error
    assert fake.calls == []


def test_apply_pair_mode_cancel_and_error(make_napari_viewer_proxy, qtbot, brain, monkeypatch):
    fake = _PairRecorder(n=500, delay=0.01)
    monkeypatch.setattr(api, "register_pair", fake, raising=False)
    viewer, widget, _, _ = _pair_viewer(make_napari_viewer_proxy, brain)
    widget.atlas.setCurrentText("fixed scan: post")
    widget.progress_received.connect(lambda event: widget.cancel())
    n_layers = len(viewer.layers)
    with qtbot.waitSignal(widget.run_finished, timeout=60_000) as blocker:
        widget.run()
    assert blocker.args[0].cancelled and blocker.args[0].pair is None
    qtbot.waitUntil(widget.run_button.isEnabled, timeout=10_000)
    assert widget.status.text() == "cancelled"
    assert len(viewer.layers) == n_layers
    assert fake.events < 50  # the callback raised RegistrationCancelled at the next event
    assert workers.last_pair(viewer) is None

    # the activity dock's cancel (worker.quit()) stops the helper thread too
    quitter = _PairRecorder(n=500, delay=0.01)
    monkeypatch.setattr(api, "register_pair", quitter, raising=False)
    widget.progress_received.disconnect()
    widget.progress_received.connect(lambda event: widget.worker and widget.worker.quit())
    with qtbot.waitSignal(widget.run_finished, timeout=60_000) as blocker:
        widget.run()
    assert blocker.args[0].cancelled
    qtbot.waitUntil(widget.run_button.isEnabled, timeout=10_000)
    qtbot.wait(300)
    n = quitter.events
    qtbot.wait(300)
    assert quitter.events == n < 100  # and stays stopped
    widget.progress_received.disconnect()

    monkeypatch.setattr(api, "register_pair", _boom, raising=False)
    start = len(notification_manager.records)
    with qtbot.waitSignal(widget.run_failed, timeout=30_000) as blocker:
        widget.run()
    assert "boom" in blocker.args[0]
    qtbot.waitUntil(widget.run_button.isEnabled, timeout=10_000)
    errors = notifications_since(start, NotificationSeverity.ERROR)
    assert len(errors) == 1 and "pair registration failed" in errors[0] and "boom" in errors[0]


def test_pair_steps_without_register_pair(monkeypatch, brain):
    monkeypatch.delattr(api, "register_pair", raising=False)
    base = workers.ApplyJob(
        scan=brain,
        scan_name="pre",
        atlas="mni152",
        model=None,
        preset="test",
        fine_tune_steps=0,
        pseudo_cases=0,
        refine=False,
        truth=None,
        device="cpu",
        seed=0,
    )
    job = workers.PairJob(base, _follow_up(brain), "post")
    with pytest.raises(workers.TaskError, match=r"no api\.register_pair"):
        _drain(workers.pair_steps(job, threading.Event()))


def test_evaluate_tre_through_last_pair(make_napari_viewer_proxy, qtbot, brain, tmp_path):
    from napari_girnet._napari.evaluate_widget import FIELD_FILE, FIELD_NONE, FIELD_PAIR

    viewer = make_napari_viewer_proxy()
    widget = EvaluateWidget(viewer)
    dock(viewer, widget)
    ids = ["1", "2", "10"]
    fixed = np.array([[10.0, -20.0, 5.0], [0.0, 0.0, 0.0], [-30.0, 12.5, 40.0]])  # RAS mm
    moving = fixed + np.array([2.0, 0.0, 0.0])  # the pair's field maps fixed p to p + 2 mm R
    moving[2] += (0.0, 3.0, 0.0)  # ... but landmark 10 moved 3 mm more (3 mm TRE after)
    _points(viewer, "pre landmarks", moving, ids)
    _points(viewer, "post landmarks", fixed, ids)
    widget.moving.setCurrentText("pre landmarks")
    widget.fixed.setCurrentText("post landmarks")
    items = [widget.field_source.itemText(i) for i in range(widget.field_source.count())]
    assert items == [FIELD_NONE, FIELD_FILE, FIELD_PAIR]

    # no pair run yet: a one-line error, no worker
    widget.field_source.setCurrentText(FIELD_PAIR)
    start = len(notification_manager.records)
    assert widget.compute_tre() is None
    errors = notifications_since(start, NotificationSeverity.ERROR)
    assert len(errors) == 1 and "no pair result yet" in errors[0]

    post = _follow_up(brain)
    workers.remember_pair(viewer, _fake_pair(brain, post, shift_mm=2.0), "pre", "post")
    with qtbot.waitSignal(widget.tre_done, timeout=30_000) as blocker:
        widget.compute_tre()
    after = blocker.args[0]
    assert after["per_landmark"] == pytest.approx({"1": 0.0, "2": 0.0, "10": 3.0}, abs=1e-5)
    before = widget.results["tre_before_mm"]
    assert before["per_landmark"] == pytest.approx({"1": 2.0, "2": 2.0, "10": 13**0.5})
    table = widget.tre_table
    assert table.columnCount() == 3
    assert [table.horizontalHeaderItem(c).text() for c in range(3)] == [
        "landmark",
        "before (mm)",
        "after (mm)",
    ]
    rows = [tuple(table.item(r, c).text() for c in range(3)) for r in range(table.rowCount())]
    assert rows[:3] == [("1", "2.00", "0.00"), ("2", "2.00", "0.00"), ("10", "3.61", "3.00")]
    assert "before" in widget.tre_summary.text()

    path = widget.export_csv(tmp_path / "tre.csv")
    with path.open() as fh:
        values = {row["metric"]: row["value"] for row in csv.DictReader(fh)}
    assert float(values["tre_before_mm.mean"]) == pytest.approx(before["mean"])
    assert float(values["tre_mm.mean"]) == pytest.approx(1.0, abs=1e-5)
    assert float(values["tre_mm.per_landmark.10"]) == pytest.approx(3.0, abs=1e-5)
    assert "last pair result (pre → post)" in values["inputs.tre_field"]

    # back to "none": two columns, one TRE, the stale "before" entry is gone
    widget.field_source.setCurrentText(FIELD_NONE)
    with qtbot.waitSignal(widget.tre_done, timeout=30_000) as blocker:
        widget.compute_tre()
    assert table.columnCount() == 2 and "tre_before_mm" not in widget.results
    qtbot.waitUntil(widget.tre_button.isEnabled, timeout=5_000)


def test_apply_pair_mode_real_register_pair(make_napari_viewer_proxy, qtbot, brain):
    """The real api.register_pair behind the widget ('test' preset, untrained networks, no
    refinement steps): the fixed-grid layers overlay the follow-up layer."""
    if not hasattr(api, "register_pair"):
        pytest.skip("napari_girnet.api.register_pair is not available in this build")
    viewer, widget, pre, post = _pair_viewer(make_napari_viewer_proxy, brain)
    widget.atlas.setCurrentText("fixed scan: post")
    widget.instance_steps.setValue(0)
    before = {ly.name for ly in viewer.layers}
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        widget.run()
    outcome = blocker.args[0]
    qtbot.waitUntil(widget.run_button.isEnabled, timeout=10_000)
    assert not outcome.cancelled and outcome.pair is not None
    added = {ly.name: ly for ly in viewer.layers if ly.name not in before}
    for name in ("moved", "lesion mask", "deformation"):
        layer = added[f"pre {name} (on post)"]
        np.testing.assert_allclose(layer.scale, post.scale, err_msg=name)
        np.testing.assert_allclose(layer.translate, post.translate, err_msg=name)
    assert added["pre moved (on post)"].data.shape == post.data.shape
    assert added["pre lesion mask (on pre)"].data.shape == pre.data.shape
    assert workers.last_pair(viewer) is not None
