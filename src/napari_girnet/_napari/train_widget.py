"""Dock widget "Train (co-learning)": GIRNet co-learning on scan layers with a live loss plot.

Thin by design: the widget reads its controls and layers on the GUI thread into a frozen
:class:`~napari_girnet._napari.workers.TrainJob`, runs
:func:`~napari_girnet._napari.workers.train_steps` (which calls :func:`napari_girnet.api.fit`)
in a napari generator worker, and touches the viewer only in the worker's signal handlers. See
:mod:`napari_girnet._napari.workers` for the threading, stop and error model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import napari
import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .. import api
from ..core.config import PRESETS
from . import layers
from .loss_plot import LossPlot
from .tooltips import tip
from .workers import (
    LayerChecklist,
    LayerCombo,
    TrainControl,
    TrainJob,
    TrainOutcome,
    TrainStep,
    add_or_update_layers,
    available_devices,
    default_preset,
    one_line,
    remember_trained,
    train_steps,
)

if TYPE_CHECKING:  # pragma: no cover
    from napari.qt.threading import GeneratorWorker

__all__ = ["ATLAS_BUNDLED", "TrainWidget", "default_run_dir"]

log = logging.getLogger(__name__)

ATLAS_BUNDLED = "MNI152 (bundled)"


def default_run_dir() -> Path:
    """A new time-stamped run folder under ``~/.cache/napari-girnet/runs`` (or the temp dir).

    The folder is not created here; the engine creates it with the first checkpoint.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path.home() / ".cache"
    if not (base.is_dir() and os.access(base, os.W_OK)) and not os.access(Path.home(), os.W_OK):
        base = Path(tempfile.gettempdir())
    return base / "napari-girnet" / "runs" / stamp


def _snapshot(volume: Any) -> Any:
    """A copy of a layer's volume, so that later edits of the layer do not reach the worker."""
    return replace(volume, array=np.array(volume.array))


class TrainWidget(QWidget):
    """GIRNet co-learning on one or more Image layers.

    Signals
    -------
    training_started()
        A worker was started.
    report_received(object)
        A :class:`~napari_girnet._napari.workers.TrainStep` (one per step), after the plot,
        progress and preview layers were updated.
    training_finished(object)
        The :class:`~napari_girnet._napari.workers.TrainOutcome` of a run that ended normally
        or by Stop.
    training_failed(str)
        One-line reason of a failed run (the notification is shown by napari).
    """

    training_started = Signal()
    report_received = Signal(object)
    training_finished = Signal(object)
    training_failed = Signal(str)

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.worker: GeneratorWorker | None = None
        self.last_outcome: TrainOutcome | None = None
        self._control: TrainControl | None = None
        self._job: TrainJob | None = None
        self._plot_folder: Path | None = None
        self._first_step: int | None = None
        self._build()
        self._on_preset_changed(self.preset.currentText())
        self._set_running(False)

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        image = napari.layers.Image
        self.scans = LayerChecklist(self.viewer, image)
        self.scans.setMaximumHeight(90)
        self.atlas = LayerCombo(self.viewer, image, extra=(ATLAS_BUNDLED,))
        self.preset = QComboBox()
        self.preset.addItems(list(PRESETS))
        self.preset.setCurrentText(default_preset())
        self.steps = QSpinBox()
        self.steps.setRange(1, 10_000_000)
        self.device = QComboBox()
        self.device.addItems(available_devices())
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.checkpoint_dir = QLineEdit(str(default_run_dir()))
        self.browse = QPushButton("Browse…")
        self.new_run = QPushButton("New")
        self.pseudo_cases = QSpinBox()
        self.pseudo_cases.setRange(0, 1000)
        self.pseudo_cases.setValue(8)
        self.init_bundled = QCheckBox("start from bundled model")
        self.preview_every = QSpinBox()
        self.preview_every.setRange(0, 10_000_000)
        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.progress_label = QLabel("idle")
        self.progress_label.setWordWrap(True)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.plot = LossPlot(self)

        for widget, key in (
            (self.scans, "scans"),
            (self.atlas, "atlas"),
            (self.preset, "preset"),
            (self.steps, "steps"),
            (self.device, "device"),
            (self.seed, "seed"),
            (self.checkpoint_dir, "checkpoint_dir"),
            (self.browse, "browse"),
            (self.new_run, "new_run"),
            (self.pseudo_cases, "pseudo_cases"),
            (self.init_bundled, "init_bundled"),
            (self.preview_every, "preview_every"),
            (self.start_button, "start"),
            (self.stop_button, "stop"),
            (self.plot, "plot"),
        ):
            widget.setToolTip(tip(f"train.{key}"))

        folder_row = QHBoxLayout()
        folder_row.setContentsMargins(0, 0, 0, 0)
        folder_row.addWidget(self.checkpoint_dir, 1)
        folder_row.addWidget(self.browse)
        folder_row.addWidget(self.new_run)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)

        form = QFormLayout()
        form.addRow("Scans", self.scans)
        form.addRow("Atlas", self.atlas)
        form.addRow("Preset", self.preset)
        form.addRow("Iterations", self.steps)
        form.addRow("Device", self.device)
        form.addRow("Seed", self.seed)
        form.addRow("Checkpoints", folder_row)
        form.addRow("Pseudo cases", self.pseudo_cases)
        form.addRow("", self.init_bundled)
        form.addRow("Preview every", self.preview_every)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_label)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.plot, 1)

        self.preset.currentTextChanged.connect(self._on_preset_changed)
        self.browse.clicked.connect(self._browse)
        self.new_run.clicked.connect(self._new_run)
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)

    def _on_preset_changed(self, name: str) -> None:
        """Take the preset's schedule length and preview period as defaults."""
        if name not in PRESETS:
            return
        cfg = PRESETS[name]
        self.steps.setValue(cfg.schedule.steps)
        self.preview_every.setValue(cfg.runtime.preview_every)
        bundled = api.bundled_model_path(name) is not None
        self.init_bundled.setEnabled(bundled)
        self.init_bundled.setChecked(bundled)
        if not bundled:
            self.init_bundled.setToolTip(
                tip("train.init_bundled") + f" (no weights are bundled for {name!r})"
            )
        else:
            self.init_bundled.setToolTip(tip("train.init_bundled"))

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Checkpoint folder", self.checkpoint_dir.text()
        )
        if folder:
            self.checkpoint_dir.setText(folder)

    def _new_run(self) -> None:
        self.checkpoint_dir.setText(str(default_run_dir()))

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        for w in (
            self.scans,
            self.atlas,
            self.preset,
            self.steps,
            self.device,
            self.seed,
            self.checkpoint_dir,
            self.browse,
            self.new_run,
            self.pseudo_cases,
            self.preview_every,
        ):
            w.setEnabled(not running)
        self.init_bundled.setEnabled(
            not running and api.bundled_model_path(self.preset.currentText()) is not None
        )

    @property
    def is_running(self) -> bool:
        return self.worker is not None

    # ------------------------------------------------------------------ job
    def job(self) -> TrainJob:
        """The job described by the controls (GUI thread: reads layers).

        Raises
        ------
        ValueError
            No scan ticked, or a layer that is not a 3D volume (message names it).
        """
        names = self.scans.checked_names()
        if not names:
            raise ValueError("tick at least one scan layer to train on")
        scans = tuple(_snapshot(layers.layer_to_volume(self.viewer.layers[n])) for n in names)
        atlas_layer = self.atlas.layer()
        atlas: Any = "mni152"
        if atlas_layer is not None:
            atlas = _snapshot(layers.layer_to_volume(atlas_layer))
        preset = self.preset.currentText()
        init = None
        if self.init_bundled.isEnabled() and self.init_bundled.isChecked():
            init = api.bundled_model_path(preset)
        folder = self.checkpoint_dir.text().strip()
        if not folder:
            raise ValueError("choose a checkpoint folder")
        return TrainJob(
            scans=scans,
            scan_names=tuple(names),
            atlas=atlas,
            preset=preset,
            steps=self.steps.value(),
            device=self.device.currentText(),
            seed=self.seed.value(),
            checkpoint_dir=Path(folder).expanduser(),
            pseudo_cases=self.pseudo_cases.value(),
            init=init,
            preview_every=self.preview_every.value(),
        )

    def start(self) -> None:
        """Start (or resume, when the folder holds a ``last.pt``) co-learning in a worker."""
        if self.worker is not None:
            return
        try:
            job = self.job()
        except ValueError as exc:
            show_error(f"GIRNet training: {one_line(exc)}")
            return
        self._job = job
        self._control = TrainControl()
        if job.checkpoint_dir != self._plot_folder:
            self.plot.clear()
            self._plot_folder = job.checkpoint_dir
        total = job.total_steps()
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(0)
        resume = (job.checkpoint_dir / "last.pt").is_file()
        self.progress_label.setText(
            ("resuming" if resume else "preparing")
            + f" {len(job.scans)} scan(s): brain mask and affine alignment…"
        )
        self._set_running(True)
        self.worker = create_worker(
            train_steps,
            job,
            self._control,
            _progress={"total": total, "desc": "GIRNet co-learning"},
            _connect={
                "yielded": self._on_yielded,
                "returned": self._on_returned,
                "errored": self._on_errored,
                "aborted": self._on_aborted,
                "finished": self._on_finished,
            },
            _start_thread=True,
        )
        # closing the dock (or the viewer) stops the run cleanly instead of leaving it running
        self.destroyed.connect(self._control.request_stop)
        self.training_started.emit()

    def stop(self) -> None:
        """Ask the run to stop after the current step (it saves ``last.pt`` and returns)."""
        if self._control is None:
            return
        self._control.request_stop()
        self.stop_button.setEnabled(False)
        self.progress_label.setText("stopping after the current step…")

    # ------------------------------------------------------------------ worker signals
    def _on_yielded(self, item: TrainStep) -> None:
        report = item.report
        self.plot.add_report(report)
        total = max(report.total_steps, 1)
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(min(report.step, total))
        self._sync_activity_bar(report.step)
        done = report.step
        rate = report.elapsed / max(1, self._steps_seen(done))
        eta = max(0.0, (report.total_steps - done) * rate)
        self.progress_label.setText(
            f"step {done}/{report.total_steps} · {report.phase} loss {report.loss:.4g} · "
            f"{report.seconds:.2f} s/step · ETA {_duration(eta)}"
        )
        if item.preview is not None and item.native is not None and self._job is not None:
            try:
                data = layers.preview_to_layers(item.preview, self._job.scan_names[0], item.native)
                add_or_update_layers(self.viewer, data, update=True)
            except Exception as exc:  # a preview must never end a training run
                log.warning("preview failed: %s", exc, exc_info=True)
        self.report_received.emit(item)

    def _steps_seen(self, step: int) -> int:
        """Steps run in this session (for the ETA), from the first yielded step."""
        if self._first_step is None or step < self._first_step:
            self._first_step = step
        return step - self._first_step + 1

    def _sync_activity_bar(self, step: int) -> None:
        """Show the absolute step in the activity dock (it counts yields, i.e. run steps)."""
        pbar = getattr(self.worker, "pbar", None)
        if pbar is None:
            return
        try:
            if pbar.total and pbar.n != step:
                pbar.n = min(step, pbar.total)
                pbar.events.value(value=pbar.n)
        except Exception:  # pragma: no cover - cosmetic only
            log.debug("could not update the activity-dock progress bar", exc_info=True)

    def _on_returned(self, outcome: TrainOutcome) -> None:
        self.last_outcome = outcome
        report = outcome.report
        if outcome.checkpoint is not None:
            remember_trained(self.viewer, outcome.checkpoint)
        if report is None:
            self.progress_label.setText("stopped before the first step (nothing saved)")
        else:
            if outcome.steps_run == 0 and report.phase == "finished":
                msg = (
                    f"already at step {report.step}/{report.total_steps}: raise Iterations to "
                    "continue, or press New for a fresh run"
                )
            else:
                verb = "stopped" if report.phase == "stopped" else "finished"
                msg = f"{verb} at step {report.step}/{report.total_steps}"
            if outcome.checkpoint is not None:
                msg += f"; checkpoint {outcome.checkpoint}"
            self.progress_label.setText(msg)
            show_info(f"GIRNet training {msg}")
        self.training_finished.emit(outcome)

    def _on_errored(self, exc: BaseException) -> None:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.error("GIRNet training failed", exc_info=exc)
        show_error(reason)
        self.progress_label.setText(f"failed: {reason}")
        last = self._job.checkpoint_dir / "last.pt" if self._job is not None else None
        if last is not None and last.is_file():
            remember_trained(self.viewer, last)
            self.progress_label.setText(f"failed: {reason} (last checkpoint: {last})")
        self.training_failed.emit(reason)

    def _on_aborted(self) -> None:
        # worker.quit() (the activity dock's cancel) abandons the generator between steps
        last = self._job.checkpoint_dir / "last.pt" if self._job is not None else None
        msg = "cancelled from the activity dock"
        if last is not None and last.is_file():
            remember_trained(self.viewer, last)
            msg += f"; last periodic checkpoint: {last}"
        self.progress_label.setText(msg)
        show_warning(f"GIRNet training {msg}")
        self.training_finished.emit(TrainOutcome(None, last, 0))

    def _on_finished(self) -> None:
        if self._control is not None:
            with contextlib.suppress(TypeError, RuntimeError):  # already disconnected
                self.destroyed.disconnect(self._control.request_stop)
        self.worker = None
        self._control = None
        self._first_step = None
        self._set_running(False)


def _duration(seconds: float) -> str:
    """``"42 s"``, ``"3 min 05 s"`` or ``"2 h 10 min"``."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
