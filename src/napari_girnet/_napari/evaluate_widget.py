"""Dock widget "Evaluate": landmark TRE (optionally through a displacement field) and Dice/HD95.

Inputs are read from the layers on the GUI thread (points in world RAS mm through
:func:`~napari_girnet._napari.layers.points_to_world`, label arrays and their scale), the
computations (:func:`~napari_girnet._napari.workers.landmark_tre`,
:func:`~napari_girnet._napari.workers.mask_metrics`) run in napari function workers (reading a
field or computing HD95 on a large volume takes seconds), and the tables are filled in the
``returned`` handlers. Errors (unpairable landmarks, masks on different grids, a bad field file)
are shown as one-line error notifications.

The displacement field of the TRE is chosen by a source combo: none (the points as they are), a
field file (NIfTI), or the last pair result of the Apply widget (its ``field_fixed_to_moving``,
on the fixed scan's grid, mapping fixed points to moving points). With a field the table shows
the TRE before and after it, and the export holds both (``tre_before_mm`` and ``tre_mm``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import napari
import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..evaluation.report import write_report
from . import layers, reader
from .tooltips import tip
from .workers import (
    LayerCombo,
    add_or_update_layers,
    format_mm,
    landmark_tre_before_after,
    last_pair,
    mask_metrics,
    one_line,
)

if TYPE_CHECKING:  # pragma: no cover
    from napari.qt.threading import FunctionWorker

__all__ = ["FIELD_FILE", "FIELD_NONE", "FIELD_PAIR", "EvaluateWidget"]

log = logging.getLogger(__name__)

FIELD_NONE = "none"
FIELD_FILE = "file…"
FIELD_PAIR = "last pair result"
_TRE_HEADERS = ("landmark", "TRE (mm)")
_TRE_PAIR_HEADERS = ("landmark", "before (mm)", "after (mm)")


def _set_headers(table: QTableWidget, headers: tuple[str, ...]) -> None:
    table.setColumnCount(len(headers))
    table.setHorizontalHeaderLabels(list(headers))


def _table(headers: tuple[str, ...]) -> QTableWidget:
    table = QTableWidget(0, len(headers))
    table.setHorizontalHeaderLabels(list(headers))
    vertical, horizontal = table.verticalHeader(), table.horizontalHeader()
    if vertical is not None:
        vertical.setVisible(False)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    if horizontal is not None:
        horizontal.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
    table.setMinimumHeight(120)
    return table


def _fill(table: QTableWidget, rows: list[tuple[str, ...]]) -> None:
    table.setRowCount(len(rows))
    for r, cells in enumerate(rows):
        for c, text in enumerate(cells):
            table.setItem(r, c, QTableWidgetItem(text))


class EvaluateWidget(QWidget):
    """Target registration error of landmark pairs and Dice / HD95 of two label layers.

    Signals
    -------
    tre_done(object)
        The TRE dict (``mean``, ``sd``, ``median``, ``max``, ``n``, ``per_landmark``), after the
        table was filled; with a field, the TRE after it (the one before is in
        ``results["tre_before_mm"]``).
    masks_done(object)
        The mask metrics dict (``dice``, ``hd95_mm``, volumes).
    evaluation_failed(str)
        One-line reason of a failed computation (also shown as an error notification).
    """

    tre_done = Signal(object)
    masks_done = Signal(object)
    evaluation_failed = Signal(str)

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.results: dict[str, Any] = {}
        self._workers: set[FunctionWorker] = set()
        self._build()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        points = napari.layers.Points
        labels = napari.layers.Labels
        self.moving = LayerCombo(self.viewer, points)
        self.fixed = LayerCombo(self.viewer, points)
        self.load_moving = QPushButton("Load CSV…")
        self.load_fixed = QPushButton("Load CSV…")
        self.field_source = QComboBox()
        self.field_source.addItems([FIELD_NONE, FIELD_FILE, FIELD_PAIR])
        self.field = QLineEdit()
        self.field.setPlaceholderText("(none: compare the points as they are)")
        self.field_browse = QPushButton("Browse…")
        self.field_clear = QPushButton("Clear")
        self.tre_button = QPushButton("Compute TRE")
        self.tre_table = _table(("landmark", "TRE (mm)"))
        self.tre_summary = QLabel("")
        self.pred = LayerCombo(self.viewer, labels)
        self.truth = LayerCombo(self.viewer, labels)
        self.masks_button = QPushButton("Compute Dice / HD95")
        self.masks_table = _table(("metric", "value"))
        self.export_button = QPushButton("Export CSV…")

        for widget, key in (
            (self.moving, "moving"),
            (self.fixed, "fixed"),
            (self.load_moving, "load_moving"),
            (self.load_fixed, "load_fixed"),
            (self.field_source, "field_source"),
            (self.field, "field"),
            (self.field_browse, "field_browse"),
            (self.field_clear, "field_clear"),
            (self.tre_button, "tre"),
            (self.tre_table, "tre"),
            (self.pred, "pred"),
            (self.truth, "truth"),
            (self.masks_button, "masks"),
            (self.masks_table, "masks"),
            (self.export_button, "export"),
        ):
            widget.setToolTip(tip(f"evaluate.{key}"))

        def row(*widgets: QWidget) -> QHBoxLayout:
            box = QHBoxLayout()
            box.setContentsMargins(0, 0, 0, 0)
            for i, w in enumerate(widgets):
                box.addWidget(w, 1 if i == 0 else 0)
            return box

        tre_form = QFormLayout()
        tre_form.addRow("Moving", row(self.moving, self.load_moving))
        tre_form.addRow("Fixed", row(self.fixed, self.load_fixed))
        tre_form.addRow("Field from", self.field_source)
        tre_form.addRow("Field file", row(self.field, self.field_browse, self.field_clear))
        tre_box = QGroupBox("Landmarks (TRE)")
        tre_layout = QVBoxLayout(tre_box)
        tre_layout.addLayout(tre_form)
        tre_layout.addWidget(self.tre_button)
        tre_layout.addWidget(self.tre_table)
        tre_layout.addWidget(self.tre_summary)

        mask_form = QFormLayout()
        mask_form.addRow("Prediction", self.pred)
        mask_form.addRow("Truth", self.truth)
        mask_box = QGroupBox("Masks (Dice / HD95)")
        mask_layout = QVBoxLayout(mask_box)
        mask_layout.addLayout(mask_form)
        mask_layout.addWidget(self.masks_button)
        mask_layout.addWidget(self.masks_table)

        layout = QVBoxLayout(self)
        layout.addWidget(tre_box)
        layout.addWidget(mask_box)
        layout.addWidget(self.export_button)
        layout.addStretch(1)

        self.load_moving.clicked.connect(lambda *_: self._ask_landmarks("moving"))
        self.load_fixed.clicked.connect(lambda *_: self._ask_landmarks("fixed"))
        self.field_browse.clicked.connect(self._browse_field)
        self.field_clear.clicked.connect(self._clear_field)
        self.field.textChanged.connect(self._on_field_text)
        self.tre_button.clicked.connect(self.compute_tre)
        self.masks_button.clicked.connect(self.compute_masks)
        self.export_button.clicked.connect(self._ask_export)

    # ------------------------------------------------------------------ files
    def _ask_landmarks(self, role: str) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, f"{role.capitalize()} landmarks", "", "Landmark CSV (*.csv);;All (*)"
        )
        if path:
            self.load_landmarks(path, role)

    def load_landmarks(self, path: str | Path, role: str) -> Any | None:
        """Add a Points layer from a landmark CSV (via the plugin's reader) as ``role``.

        ``role`` is ``"moving"`` or ``"fixed"``. Returns the new layer (None on a bad file,
        after an error notification).
        """
        try:
            data = reader.read_landmark_csv(path)
        except (ValueError, OSError) as exc:
            show_error(f"GIRNet: cannot read landmarks: {one_line(exc)}")
            return None
        added = add_or_update_layers(self.viewer, data)
        if not added:
            return None
        combo = self.moving if role == "moving" else self.fixed
        combo.refresh()
        combo.setCurrentText(added[0].name)
        return added[0]

    def _on_field_text(self, text: str) -> None:
        """Typing or browsing a file name selects the "file…" source."""
        if text.strip():
            self.field_source.setCurrentText(FIELD_FILE)

    def _clear_field(self) -> None:
        self.field.clear()
        self.field_source.setCurrentText(FIELD_NONE)

    def _field(self) -> tuple[Any, str | None]:
        """The chosen field for :func:`landmark_tre_before_after` and its description.

        Raises
        ------
        ValueError
            "file…" without a file name, or "last pair result" before any pair run.
        """
        source = self.field_source.currentText()
        if source == FIELD_FILE:
            text = self.field.text().strip()
            if not text:
                raise ValueError("choose a displacement field file (or the field source 'none')")
            return text, text
        if source == FIELD_PAIR:
            last = last_pair(self.viewer)
            if last is None:
                raise ValueError(
                    "no pair result yet; run Apply model with a 'fixed scan: ...' target first"
                )
            pair, moving_name, fixed_name = last
            field = (np.asarray(pair.field_fixed_to_moving), pair.fixed)
            return field, f"last pair result ({moving_name} → {fixed_name}): field_fixed_to_moving"
        return None, None

    def _browse_field(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Displacement field", "", "NIfTI (*.nii *.nii.gz);;All (*)"
        )
        if path:
            self.field.setText(path)

    def _ask_export(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export metrics", "", "CSV (*.csv)")
        if path:
            self.export_csv(path)

    def export_csv(self, path: str | Path) -> Path | None:
        """Write the metrics shown to ``path`` (``metric,value``) and a JSON copy next to it."""
        if not self.results:
            show_error("GIRNet: nothing to export yet; compute TRE or Dice / HD95 first")
            return None
        path = Path(path)
        if path.suffix.lower() != ".csv":
            path = path.with_suffix(".csv")
        try:
            write_report(self.results, path.with_suffix(".json"), csv_path=path)
        except (ValueError, OSError) as exc:
            show_error(f"GIRNet: cannot export: {one_line(exc)}")
            return None
        show_info(f"GIRNet: metrics written to {path}")
        return path

    # ------------------------------------------------------------------ TRE
    def compute_tre(self) -> FunctionWorker | None:
        """Start the TRE computation (returns the worker; None when inputs are missing)."""
        moving, fixed = self.moving.layer(), self.fixed.layer()
        if moving is None or fixed is None:
            show_error("GIRNet: choose a moving and a fixed Points layer")
            return None
        ids_m: tuple[str, ...] | None
        ids_f: tuple[str, ...] | None
        try:
            ids_m, pts_m = layers.points_to_world(moving)
            ids_f, pts_f = layers.points_to_world(fixed)
        except ValueError as exc:
            show_error(f"GIRNet: {one_line(exc)}")
            return None
        if not (_has_ids(moving) and _has_ids(fixed)):
            ids_m = ids_f = None  # pair by order
        try:
            field, field_text = self._field()
        except ValueError as exc:
            show_error(f"GIRNet: {exc}")
            return None
        inputs = {"moving": moving.name, "fixed": fixed.name, "field": field_text}
        return self._start(
            landmark_tre_before_after,
            (ids_m, pts_m, ids_f, pts_f, field),
            lambda out: self._show_tre(out, inputs),
            self.tre_button,
        )

    def _show_tre(
        self, out: tuple[dict[str, Any], dict[str, Any] | None], inputs: dict[str, Any]
    ) -> None:
        before, after = out
        if after is None:
            tre = before
            _set_headers(self.tre_table, _TRE_HEADERS)
            rows: list[tuple[str, ...]] = [
                (str(i), format_mm(d)) for i, d in tre["per_landmark"].items()
            ]
            rows.append(("mean ± SD", f"{format_mm(tre['mean'])} ± {format_mm(tre['sd'])}"))
            self.results.pop("tre_before_mm", None)
        else:
            tre = after
            _set_headers(self.tre_table, _TRE_PAIR_HEADERS)
            rows = [
                (str(i), format_mm(before["per_landmark"][i]), format_mm(d))
                for i, d in after["per_landmark"].items()
            ]
            rows.append(
                (
                    "mean ± SD",
                    f"{format_mm(before['mean'])} ± {format_mm(before['sd'])}",
                    f"{format_mm(after['mean'])} ± {format_mm(after['sd'])}",
                )
            )
            self.results["tre_before_mm"] = before
        _fill(self.tre_table, rows)
        text = (
            f"n = {tre['n']}, mean {format_mm(tre['mean'])} ± {format_mm(tre['sd'])} mm, "
            f"median {format_mm(tre['median'])}, max {format_mm(tre['max'])} mm"
        )
        if after is not None:
            text = f"before: mean {format_mm(before['mean'])} mm; after: " + text
        self.tre_summary.setText(text)
        self.results["tre_mm"] = tre
        self.results.setdefault("inputs", {}).update(
            {f"tre_{k}": v for k, v in inputs.items() if v is not None}
        )
        self.tre_done.emit(tre)

    # ------------------------------------------------------------------ masks
    def compute_masks(self) -> FunctionWorker | None:
        """Start the Dice / HD95 computation (returns the worker; None when inputs are missing)."""
        pred, truth = self.pred.layer(), self.truth.layer()
        if pred is None or truth is None:
            show_error("GIRNet: choose a prediction and a truth Labels layer")
            return None
        p, t = _level0(pred.data), _level0(truth.data)
        spacing = np.asarray(pred.scale, dtype=np.float64)
        if not np.allclose(spacing, np.asarray(truth.scale, dtype=np.float64), rtol=1e-4):
            show_error(
                f"GIRNet: {pred.name} and {truth.name} have different voxel sizes "
                f"({tuple(pred.scale)} vs {tuple(truth.scale)}); resample one first"
            )
            return None
        inputs = {"pred": pred.name, "truth": truth.name}
        return self._start(
            mask_metrics,
            (np.array(p), np.array(t), tuple(spacing), (pred.name, truth.name)),
            lambda out: self._show_masks(out, inputs),
            self.masks_button,
        )

    def _show_masks(self, out: dict[str, Any], inputs: dict[str, Any]) -> None:
        _fill(
            self.masks_table,
            [
                ("Dice", f"{out['dice']:.4f}"),
                ("HD95 (mm)", format_mm(out["hd95_mm"])),
                ("predicted volume (mm³)", f"{out['predicted_volume_mm3']:.1f}"),
                ("truth volume (mm³)", f"{out['truth_volume_mm3']:.1f}"),
            ],
        )
        self.results.update(out)
        self.results.setdefault("inputs", {}).update({f"mask_{k}": v for k, v in inputs.items()})
        self.masks_done.emit(out)

    # ------------------------------------------------------------------ workers
    def _start(self, func: Any, args: tuple, on_done: Any, button: QPushButton) -> FunctionWorker:
        """Run ``func(*args)`` in a function worker; ``on_done(result)`` on the GUI thread.

        An ``errored`` handler is always connected (so superqt does not re-raise the exception
        in the GUI thread); it shows the one-line reason as an error notification.
        """
        button.setEnabled(False)
        holder: dict[str, Any] = {}

        def finished() -> None:
            self._workers.discard(holder.pop("worker", None))
            button.setEnabled(True)

        def errored(exc: BaseException) -> None:
            log.info("evaluation failed: %s", exc, exc_info=exc)
            show_error(f"GIRNet evaluation failed: {one_line(exc)}")
            self.evaluation_failed.emit(one_line(exc))

        worker = create_worker(
            func,
            *args,
            _connect={"returned": on_done, "errored": errored, "finished": finished},
            _start_thread=False,
        )
        holder["worker"] = worker
        self._workers.add(worker)
        worker.start()
        return worker


def _has_ids(layer: Any) -> bool:
    features = getattr(layer, "features", None)
    return features is not None and "id" in getattr(features, "columns", ())


def _level0(data: Any) -> Any:
    """Full-resolution level of possibly multiscale layer data."""
    if isinstance(data, list | tuple):
        return data[0]
    return data
