"""Dock widget "Apply model": register a scan layer to the atlas, segment and inpaint its lesion.

The widget gathers an :class:`~napari_girnet._napari.workers.ApplyJob` on the GUI thread, runs
:func:`~napari_girnet._napari.workers.apply_steps` (which iterates
:func:`napari_girnet.api.register_steps`) in a napari generator worker, shows each stage's
progress, and adds the result layers (:func:`~napari_girnet._napari.layers.result_to_layers`)
when the worker returns. Cancel stops the run at the next stage (or fine-tuning step).

The first model choice is "bundled model for preset" when weights ship for the chosen preset
(:func:`napari_girnet.api.bundled_model_path`), "untrained networks" otherwise.

Pair mode (longitudinal registration): the atlas choice also lists every Image layer as
``"fixed scan: <name>"``, a follow-up scan of the same patient. Choosing one registers the
scan (moving, e.g. pre-operative) to that scan (fixed) with
:func:`napari_girnet.api.register_pair` in the same kind of worker
(:func:`~napari_girnet._napari.workers.pair_steps`), and adds result layers on both grids
(:func:`~napari_girnet._napari.layers.pair_to_layers`). Pair mode and "every selected Image
layer" are exclusive.
"""

from __future__ import annotations

import contextlib
import logging
import threading
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
from ..evaluation import metrics
from . import layers
from .tooltips import tip
from .workers import (
    FIXED_PREFIX,
    ApplyJob,
    ApplyOutcome,
    LayerCombo,
    PairJob,
    TargetCombo,
    add_or_update_layers,
    apply_steps,
    available_devices,
    default_preset,
    format_mm,
    last_trained,
    one_line,
    pair_steps,
    remember_pair,
)

if TYPE_CHECKING:  # pragma: no cover
    from napari.qt.threading import GeneratorWorker

__all__ = [
    "MODEL_BUNDLED",
    "MODEL_CHOICES",
    "MODEL_FILE",
    "MODEL_LAST",
    "MODEL_UNTRAINED",
    "ApplyWidget",
    "fixed_layer_problem",
    "model_choices",
]

log = logging.getLogger(__name__)

_PROGRESS_MAX = 1000
_STAGE_LABELS = {
    "prepare": "affine alignment",
    "fine_tune": "fine-tuning",
    "detect": "lesion detection",
    "instance_optimise": "instance optimisation",
    "detect_registered": "lesion detection (registered atlas)",
    "predict": "prediction",
    "refine": "random-walker refinement",
    "map_back": "mapping back to the scan",
    "metrics": "metrics",
}

ATLAS_BUNDLED = "MNI152 (bundled)"
NO_TRUTH = "(none)"
MODEL_BUNDLED = "bundled model for preset"
MODEL_UNTRAINED = "untrained networks (no bundled model)"
MODEL_LAST = "last trained"
MODEL_FILE = "checkpoint file"
MODEL_CHOICES = (MODEL_BUNDLED, MODEL_LAST, MODEL_FILE)


def model_choices(preset: str) -> tuple[str, ...]:
    """The model entries for ``preset``: the bundled model only when its weights ship."""
    first = MODEL_BUNDLED if api.bundled_model_path(preset) is not None else MODEL_UNTRAINED
    return (first, MODEL_LAST, MODEL_FILE)


def _snapshot(volume: Any) -> Any:
    return replace(volume, array=np.array(volume.array))


def _ndim(layer: Any) -> int:
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    return int(np.ndim(data)) - (1 if getattr(layer, "rgb", False) else 0)


def fixed_layer_problem(moving_layer: Any, fixed_layer: Any) -> str | None:
    """Why ``fixed_layer`` cannot be the fixed scan of ``moving_layer`` in pair mode (one line
    naming the layer), or None when it can.

    Refused: the moving layer itself, a Labels layer, a 2D layer for a 3D moving scan, and
    anything that is not an Image layer.
    """
    name = getattr(fixed_layer, "name", "?")
    if fixed_layer is moving_layer or (
        moving_layer is not None and name == getattr(moving_layer, "name", None)
    ):
        return f"fixed scan {name!r} is the moving scan itself; choose the follow-up scan"
    if isinstance(fixed_layer, napari.layers.Labels):
        return f"fixed scan {name!r} is a Labels layer; choose an Image layer (the follow-up scan)"
    if not isinstance(fixed_layer, napari.layers.Image):
        return f"fixed scan {name!r} is not an Image layer"
    if moving_layer is not None and _ndim(moving_layer) == 3 and _ndim(fixed_layer) == 2:
        return (
            f"fixed scan {name!r} is 2D but the moving scan {moving_layer.name!r} is 3D; "
            "choose a 3D follow-up scan"
        )
    return None


class ApplyWidget(QWidget):
    """Apply a GIRNet model (optionally fine-tuned on the scan) to one Image layer.

    Signals
    -------
    run_started()
    progress_received(object)
        Every :class:`~napari_girnet.api.StageEvent` of the run (stages, fine-tuning steps).
    run_finished(object)
        The :class:`~napari_girnet._napari.workers.ApplyOutcome` (``result`` None if
        cancelled), after the layers were added.
    run_failed(str)
        One-line reason (the notification is shown by napari).
    """

    run_started = Signal()
    progress_received = Signal(object)
    run_finished = Signal(object)
    run_failed = Signal(str)

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.worker: GeneratorWorker | None = None
        self.last_result: api.RegistrationResult | None = None
        self.last_pair: Any = None
        self.added_layers: list[Any] = []
        self._cancel: threading.Event | None = None
        self._job: ApplyJob | PairJob | None = None
        self._stride = 6
        self._provenance: dict[str, Any] = {}
        self._queue: list[tuple[ApplyJob | PairJob, dict[str, Any]]] = []
        self._batch_cancelled = False
        self._running = False
        self._build()
        self._on_model_changed(self.model.currentText())
        self._set_running(False)

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.scan = LayerCombo(self.viewer, napari.layers.Image)
        self.atlas = TargetCombo(self.viewer, napari.layers.Image, extra=(ATLAS_BUNDLED,))
        self.model = QComboBox()
        self.preset = QComboBox()
        self.preset.addItems(list(PRESETS))
        self.preset.setCurrentText(default_preset())
        self.model.addItems(list(model_choices(self.preset.currentText())))
        self.preset.currentTextChanged.connect(self._refresh_model_choices)
        self.checkpoint = QLineEdit()
        self.checkpoint.setPlaceholderText("last.pt")
        self.browse = QPushButton("Browse…")
        self.fine_tune_steps = QSpinBox()
        self.fine_tune_steps.setRange(0, 1_000_000)
        self.fine_tune_steps.setValue(0)
        self.instance_steps = QSpinBox()
        self.instance_steps.setRange(0, 100_000)
        self.instance_steps.setValue(PRESETS[self.preset.currentText()].schedule.instance_steps)
        self.preset.currentTextChanged.connect(
            lambda name: (
                self.instance_steps.setValue(PRESETS[name].schedule.instance_steps)
                if name in PRESETS
                else None
            )
        )
        self.pseudo_cases = QSpinBox()
        self.pseudo_cases.setRange(0, 1000)
        self.pseudo_cases.setValue(8)
        self.refine = QCheckBox("refine with random walker")
        self.refine.setChecked(True)
        self.detector = QComboBox()
        self.detector.addItems(["auto", "segnet", "atlas-outlier"])
        self.skull_strip = QComboBox()
        self.skull_strip.addItems(["auto", "yes", "no"])
        self.all_selected = QCheckBox("every selected Image layer, one after another")
        self.stride = QSpinBox()
        self.stride.setRange(1, 64)
        self.stride.setValue(6)
        self.truth = LayerCombo(self.viewer, napari.layers.Labels, extra=(NO_TRUTH,))
        self.device = QComboBox()
        self.device.addItems(available_devices())
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)

        for widget, key in (
            (self.scan, "scan"),
            (self.atlas, "atlas"),
            (self.model, "model"),
            (self.preset, "preset"),
            (self.checkpoint, "checkpoint"),
            (self.browse, "browse"),
            (self.fine_tune_steps, "fine_tune_steps"),
            (self.instance_steps, "instance_steps"),
            (self.pseudo_cases, "pseudo_cases"),
            (self.refine, "refine"),
            (self.detector, "detector"),
            (self.skull_strip, "skull_strip"),
            (self.all_selected, "all_selected"),
            (self.stride, "stride"),
            (self.truth, "truth"),
            (self.device, "device"),
            (self.seed, "seed"),
            (self.run_button, "run"),
            (self.cancel_button, "cancel"),
        ):
            widget.setToolTip(tip(f"apply.{key}"))

        ckpt_row = QHBoxLayout()
        ckpt_row.setContentsMargins(0, 0, 0, 0)
        ckpt_row.addWidget(self.checkpoint, 1)
        ckpt_row.addWidget(self.browse)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)

        form = QFormLayout()
        form.addRow("Scan", self.scan)
        form.addRow("", self.all_selected)
        form.addRow("Atlas / fixed scan", self.atlas)
        form.addRow("Skull strip", self.skull_strip)
        form.addRow("Model", self.model)
        form.addRow("Preset", self.preset)
        form.addRow("Checkpoint", ckpt_row)
        form.addRow("Fine-tune steps", self.fine_tune_steps)
        form.addRow("Registration refinement", self.instance_steps)
        form.addRow("Pseudo cases", self.pseudo_cases)
        form.addRow("Lesion mask from", self.detector)
        form.addRow("", self.refine)
        form.addRow("Vector stride", self.stride)
        form.addRow("Ground truth", self.truth)
        form.addRow("Device", self.device)
        form.addRow("Seed", self.seed)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addWidget(self.progress_bar)
        layout.addStretch(1)

        self.model.currentTextChanged.connect(self._on_model_changed)
        self.atlas.currentTextChanged.connect(self._on_target_changed)
        self.fine_tune_steps.valueChanged.connect(self._update_enabled)
        self.browse.clicked.connect(self._browse)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)

    def _on_model_changed(self, _: str = "") -> None:
        self._update_enabled()
        if self.model.currentText() == MODEL_LAST:
            path = last_trained(self.viewer)
            self.status.setText(
                f"last trained: {path}" if path else "no model trained in this viewer yet"
            )

    @property
    def pair_mode(self) -> bool:
        """True when a "fixed scan: ..." entry is chosen as the target (longitudinal mode)."""
        return self.atlas.is_pair()

    def _on_target_changed(self, _: str = "") -> None:
        self._update_enabled()
        if self._running:
            return
        if self.pair_mode:
            fixed = self.atlas.currentText()[len(FIXED_PREFIX) :]
            self.status.setText(
                f"pair mode: the scan (moving) is registered to {fixed!r} (fixed, follow-up)"
            )
        elif self.status.text().startswith("pair mode"):
            self.status.setText("idle")

    def _update_enabled(self, *_: Any) -> None:
        running = self._running
        choice = self.model.currentText()
        self.preset.setEnabled(not running and choice == MODEL_BUNDLED)
        self.checkpoint.setEnabled(not running and choice == MODEL_FILE)
        self.browse.setEnabled(not running and choice == MODEL_FILE)
        self.pseudo_cases.setEnabled(
            not running and self.fine_tune_steps.value() > 0 and not self.atlas.is_pair()
        )

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "GIRNet checkpoint", self.checkpoint.text(), "Checkpoints (*.pt);;All (*)"
        )
        if path:
            self.checkpoint.setText(path)
            self.model.setCurrentText(MODEL_FILE)

    def _set_running(self, running: bool) -> None:
        self._running = running
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        for w in (
            self.scan,
            self.all_selected,
            self.atlas,
            self.model,
            self.fine_tune_steps,
            self.refine,
            self.stride,
            self.truth,
            self.device,
            self.seed,
        ):
            w.setEnabled(not running)
        self._update_enabled()

    @property
    def is_running(self) -> bool:
        return self.worker is not None

    def _refresh_model_choices(self, preset: str) -> None:
        """Offer the bundled model only for presets whose weights ship."""
        choices = model_choices(preset)
        if [self.model.itemText(i) for i in range(self.model.count())] == list(choices):
            return
        keep = self.model.currentIndex()
        self.model.clear()
        self.model.addItems(list(choices))
        self.model.setCurrentIndex(max(keep, 0))

    # ------------------------------------------------------------------ job
    def _model_path(self) -> Path | None:
        choice = self.model.currentText()
        if choice in (MODEL_BUNDLED, MODEL_UNTRAINED):
            preset = self.preset.currentText()
            if api.bundled_model_path(preset) is None:
                show_warning(
                    f"GIRNet: no weights are bundled for preset {preset!r}; the networks start "
                    "from random weights (fine-tune, or train a model first)"
                )
            return None
        if choice == MODEL_LAST:
            path = last_trained(self.viewer)
            if path is None:
                raise ValueError("no model was trained in this viewer yet (use the Train widget)")
            return path
        text = self.checkpoint.text().strip()
        if not text:
            raise ValueError("choose a checkpoint file")
        path = Path(text).expanduser()
        if not path.exists():
            raise ValueError(f"checkpoint {path} does not exist")
        return path

    def scan_layers(self) -> list[Any]:
        """The Image layers to register: the chosen scan, or with "every selected Image layer"
        checked, the Image layers selected in the layer list (not the atlas, not GIRNet results)."""
        if not self.all_selected.isChecked():
            layer = self.scan.layer()
            return [layer] if layer is not None else []
        atlas = self.atlas.layer()
        return [
            ly
            for ly in self.viewer.layers
            if ly in self.viewer.layers.selection
            and isinstance(ly, napari.layers.Image)
            and ly is not atlas
            and "role" not in ly.metadata.get("girnet", {})  # not one of our result layers
        ]

    def job(self, scan_layer: Any = None) -> ApplyJob:
        """The job described by the controls for ``scan_layer`` (default: the chosen scan)
        (GUI thread: reads layers).

        Raises
        ------
        ValueError
            No scan layer, missing model, or a layer that is not a 3D volume.
        """
        scan_layer = scan_layer if scan_layer is not None else self.scan.layer()
        if scan_layer is None:
            raise ValueError("choose a scan (Image layer)")
        if self.pair_mode:
            raise ValueError("pair mode: use pair_job() (a fixed scan is chosen as the target)")
        return self._apply_job(scan_layer)

    def _apply_job(self, scan_layer: Any) -> ApplyJob:
        scan = _snapshot(layers.layer_to_volume(scan_layer))
        atlas_layer = self.atlas.layer()
        atlas: Any = "mni152"
        if atlas_layer is not None:
            atlas = _snapshot(layers.layer_to_volume(atlas_layer))
        truth_layer = self.truth.layer()
        truth = _snapshot(layers.layer_to_volume(truth_layer)) if truth_layer else None
        model = self._model_path()
        steps = self.fine_tune_steps.value()
        self._stride = self.stride.value()
        self._provenance = {
            "widget": "Apply model",
            "input_layers": [
                n
                for n in (
                    scan_layer.name,
                    atlas_layer.name if atlas_layer is not None else None,
                    truth_layer.name if truth_layer is not None else None,
                )
                if n
            ],
            "atlas": atlas_layer.name if atlas_layer is not None else "mni152",
            "truth_layer": truth_layer.name if truth_layer is not None else None,
            "model_choice": self.model.currentText(),
            "pseudo_cases": self.pseudo_cases.value() if steps > 0 else 0,
            "refine": self.refine.isChecked(),
            "detector": self.detector.currentText(),
            "skull_strip": self.skull_strip.currentText(),
            "vector_stride": self._stride,
        }
        return ApplyJob(
            scan=scan,
            scan_name=scan_layer.name,
            atlas=atlas,
            model=model,
            preset=self.preset.currentText(),
            fine_tune_steps=steps,
            instance_steps=self.instance_steps.value(),
            pseudo_cases=self.pseudo_cases.value(),
            refine=self.refine.isChecked(),
            detector=self.detector.currentText(),
            skull_strip=self.skull_strip.currentText(),
            truth=truth,
            device=self.device.currentText(),
            seed=self.seed.value(),
        )

    def pair_job(self, moving_layer: Any = None, fixed_layer: Any = None) -> PairJob:
        """The pair-mode job: ``moving_layer`` (default: the chosen scan) registered to
        ``fixed_layer`` (default: the chosen "fixed scan: ..." entry) (GUI thread).

        Raises
        ------
        ValueError
            No scan or fixed scan, a fixed layer refused by :func:`fixed_layer_problem`, a missing
            model, or a layer that is not a 3D volume (the message names the layer).
        """
        moving_layer = moving_layer if moving_layer is not None else self.scan.layer()
        fixed_layer = fixed_layer if fixed_layer is not None else self.atlas.fixed_layer()
        if moving_layer is None:
            raise ValueError("choose a scan (Image layer), the moving scan of the pair")
        if fixed_layer is None:
            raise ValueError("choose a fixed scan (the follow-up Image layer)")
        problem = fixed_layer_problem(moving_layer, fixed_layer)
        if problem:
            raise ValueError(problem)
        base = self._apply_job(moving_layer)
        fixed = _snapshot(layers.layer_to_volume(fixed_layer))
        names = [moving_layer.name, fixed_layer.name]
        truth = self._provenance.get("truth_layer")
        self._provenance.update(
            {
                "input_layers": names + ([truth] if truth else []),
                "atlas": None,
                "mode": "pair",
                "moving_layer": moving_layer.name,
                "fixed_layer": fixed_layer.name,
                "pseudo_cases": 0,
            }
        )
        return PairJob(job=replace(base, atlas="mni152"), fixed=fixed, fixed_name=fixed_layer.name)

    def run(self) -> None:
        """Start registering the chosen scan (or every selected Image layer) in a worker.

        Several layers run one after another in the same way as one: each gets its own worker
        and its result layers as soon as it is done; a layer that fails shows its one-line error
        and the next one runs; Cancel stops the current one and drops the rest.
        """
        if self.worker is not None:
            return
        if self.pair_mode:
            if self.all_selected.isChecked():
                show_error(
                    "GIRNet apply: pair mode (a fixed scan) and 'every selected Image layer' "
                    "cannot be combined; untick one"
                )
                return
            try:
                pair = self.pair_job()
            except ValueError as exc:
                show_error(f"GIRNet apply: {exc}")
                return
            self._queue = [(pair, dict(self._provenance))]
            self._batch_cancelled = False
            self._start_next()
            return
        targets = self.scan_layers()
        if not targets:
            show_error(
                "GIRNet apply: "
                + (
                    "select one or more Image layers in the layer list"
                    if self.all_selected.isChecked()
                    else "choose a scan (Image layer)"
                )
            )
            return
        queue: list[tuple[ApplyJob | PairJob, dict[str, Any]]] = []
        try:
            for layer in targets:
                queue.append((self.job(layer), dict(self._provenance)))
        except ValueError as exc:
            show_error(f"GIRNet apply: {one_line(exc)}")
            return
        self._queue = queue
        self._batch_cancelled = False
        self._start_next()

    def _start_next(self) -> None:
        """Start the next queued job in a worker."""
        job, self._provenance = self._queue.pop(0)
        self._job = job
        self._cancel = threading.Event()
        steps = job.fine_tune_steps
        self.progress_bar.setRange(0, _PROGRESS_MAX)  # per mille of the run's stages
        self.progress_bar.setValue(0)
        target = f" → {job.fixed_name}" if isinstance(job, PairJob) else ""
        self.status.setText(
            f"{job.scan_name}{target}: affine alignment"
            + (f", fine-tuning {steps} steps" if steps else "")
            + " and prediction…"
        )
        self._set_running(True)
        self.worker = create_worker(
            pair_steps if isinstance(job, PairJob) else apply_steps,
            job,
            self._cancel,
            _progress=True,
            _connect={
                "yielded": self._on_yielded,
                "returned": self._on_returned,
                "errored": self._on_errored,
                "aborted": self._on_aborted,
                "finished": self._on_finished,
            },
            _start_thread=True,
        )
        self.destroyed.connect(self._cancel.set)  # closing the dock cancels the run
        self.run_started.emit()

    def cancel(self) -> None:
        """Cancel at the next stage or fine-tuning step."""
        if self._cancel is None:
            return
        self._cancel.set()
        self._batch_cancelled = True
        self._queue.clear()
        self.cancel_button.setEnabled(False)
        self.status.setText("cancelling…")

    # ------------------------------------------------------------------ worker signals
    def _on_yielded(self, event: api.StageEvent) -> None:
        self.progress_bar.setValue(round(_PROGRESS_MAX * event.overall))
        report = event.report
        stage = _STAGE_LABELS.get(event.stage, event.stage)
        text = f"{stage} ({event.index + 1}/{event.total})"
        if report is not None:
            text = (
                f"fine-tuning step {report.step}/{report.total_steps} · {report.phase} loss "
                f"{report.loss:.4g}"
            )
        elif event.done:
            text += f" done in {event.seconds:.1f} s"
        else:
            text += "…"
        if self._cancel is None or not self._cancel.is_set():
            self.status.setText(text)
        self.progress_received.emit(event)

    def _on_returned(self, outcome: ApplyOutcome) -> None:
        result = outcome.result
        if outcome.cancelled or result is None or self._job is None:
            self.status.setText("cancelled")
            show_info("GIRNet apply cancelled")
            self.run_finished.emit(outcome)
            return
        self.last_result = result
        try:
            if isinstance(self._job, PairJob):
                self.last_pair = outcome.pair
                remember_pair(self.viewer, outcome.pair, self._job.scan_name, self._job.fixed_name)
                data = layers.pair_to_layers(
                    outcome.pair,
                    self._job.scan_name,
                    self._job.fixed_name,
                    stride=self._stride,
                    provenance=self._provenance,
                )
            else:
                data = layers.result_to_layers(
                    result, self._job.scan_name, stride=self._stride, provenance=self._provenance
                )
            self.added_layers = add_or_update_layers(self.viewer, data)
        except Exception as exc:  # keep the viewer usable; the result stays in last_result
            log.error("could not show the GIRNet result", exc_info=exc)
            reason = f"GIRNet: could not show the result: {one_line(exc)}"
            show_error(reason)
            self.status.setText(reason)
            self.run_failed.emit(reason)
            return
        msg = self.summary(result, outcome.seconds, pair=outcome.pair)
        self.status.setText(msg)
        show_info(f"GIRNet: {msg}")
        self.run_finished.emit(outcome)

    def summary(self, result: api.RegistrationResult, seconds: float, pair: Any = None) -> str:
        """One-line summary: lesion volume, Dice/HD95 when a truth was given, the pair's mean TRE
        after and before registration (``pair.tre["after"/"before"]``, mm) when landmarks were
        given, time."""
        vol = metrics.volume_mm3(np.asarray(result.lesion_mask.array) > 0, result.scan.spacing)
        name = self._job.scan_name if self._job else "scan"
        if isinstance(self._job, PairJob):
            name += f" → {self._job.fixed_name}"
        msg = f"{name}: lesion {vol:.0f} mm³"
        msg += f" ({vol / 1000:.2f} mL)"
        m = result.metrics or {}
        if "dice" in m:
            msg += f"; Dice {m['dice']:.3f}, HD95 {format_mm(float(m['hd95_mm']))} mm"
        tre = getattr(pair, "tre", None) if pair is not None else None
        if isinstance(tre, dict) and isinstance(tre.get("after"), dict):
            before, after = tre.get("before") or {}, tre["after"]
            msg += f"; TRE {format_mm(float(after['mean']))} mm"
            if "mean" in before:
                msg += f" (before {format_mm(float(before['mean']))} mm)"
        return msg + f"; {seconds:.0f} s"

    def _on_errored(self, exc: BaseException) -> None:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.error("GIRNet apply failed", exc_info=exc)
        show_error(reason)
        self.status.setText(f"failed: {reason}")
        self.run_failed.emit(reason)

    def _on_aborted(self) -> None:
        # worker.quit() (the activity dock's cancel) abandons the generator: set the flag too
        if self._cancel is not None:
            self._cancel.set()
        self._batch_cancelled = True
        self._queue.clear()
        self.status.setText("cancelled")
        self.run_finished.emit(ApplyOutcome(None, True, 0.0))

    def _on_finished(self) -> None:
        if self._cancel is not None:
            with contextlib.suppress(TypeError, RuntimeError):  # already disconnected
                self.destroyed.disconnect(self._cancel.set)
        self.worker = None
        self._cancel = None
        if self._queue and not self._batch_cancelled:
            self._start_next()
            return
        self._queue.clear()
        self._set_running(False)
        if self.progress_bar.maximum() == 0:
            self.progress_bar.setRange(0, 1)
