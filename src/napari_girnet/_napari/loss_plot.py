"""Live loss plot of GIRNet co-learning: one line per network against the step.

A matplotlib :class:`~matplotlib.figure.Figure` (no pyplot, so no global state) in a Qt canvas
(``matplotlib.backends.backend_qtagg``, which follows the Qt binding chosen by ``qtpy``). Points
are added on the GUI thread from the worker's ``yielded`` handler; redraws are coalesced by a
single-shot timer, so the canvas redraws at most ``max_fps`` times per second however fast the
steps come.

The three networks have losses of very different scales (registration: negative similarity;
segmentation: mutual information; inpainting: LNCC + 100 x MSE), so each has its own axes,
stacked with a shared step axis. InpNet pretraining steps (``phase == "pretrain"``) are drawn
dashed on the inpainting axes.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

if TYPE_CHECKING:  # pragma: no cover
    from ..core.colearn import TrainingReport

__all__ = ["NETWORKS", "LossPlot"]

log = logging.getLogger(__name__)

#: Plotted series: phase name -> (axes row, label, colour, line style).
NETWORKS: dict[str, tuple[int, str, str, str]] = {
    "reg": (0, "reg", "#4fc3f7", "-"),
    "seg": (1, "seg", "#ffb74d", "-"),
    "inp": (2, "inp", "#81c784", "-"),
    "pretrain": (2, "inp (pretrain)", "#81c784", "--"),
}
_ROWS = ("registration", "segmentation", "inpainting")
_BG = "#262930"  # napari dark theme background
_FG = "#f0f1f2"


class LossPlot(QWidget):
    """Loss of the reg / seg / inp networks against the co-learning step.

    Parameters
    ----------
    parent : QWidget, optional
    max_fps : float
        Upper bound on redraws per second (default 5).
    """

    def __init__(self, parent: QWidget | None = None, max_fps: float = 5.0) -> None:
        super().__init__(parent)
        self._data: dict[str, tuple[list[int], list[float]]] = {k: ([], []) for k in NETWORKS}
        self.draw_count = 0  #: number of redraws so far (throttling is testable)

        self.figure = Figure(figsize=(4.0, 3.2), dpi=90, facecolor=_BG, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.canvas.setMinimumHeight(220)
        self.axes = self.figure.subplots(len(_ROWS), 1, sharex=True)
        self._lines = {}
        for key, (row, label, colour, style) in NETWORKS.items():
            (line,) = self.axes[row].plot([], [], style, color=colour, lw=1.2, label=label)
            self._lines[key] = line
        for ax, title in zip(self.axes, _ROWS, strict=True):
            ax.set_facecolor(_BG)
            ax.set_ylabel(title[:3], color=_FG, fontsize=8)
            ax.tick_params(colors=_FG, labelsize=7)
            for spine in ax.spines.values():
                spine.set_color("#5a626c")
        self.axes[-1].set_xlabel("step", color=_FG, fontsize=8)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(max(1, int(1000 / max_fps)))
        self._timer.timeout.connect(self.redraw)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)

    # ------------------------------------------------------------------ data
    def add_report(self, report: TrainingReport) -> None:
        """Add the loss of one step (final "stopped"/"finished" reports are ignored)."""
        if report.is_final:
            return
        self.add_point(report.phase, report.step, report.loss)

    def add_point(self, network: str, step: int, loss: float) -> None:
        """Add ``loss`` of ``network`` (``"reg"``, ``"seg"``, ``"inp"``, ``"pretrain"``).

        Non-finite losses and unknown networks are skipped. The redraw is scheduled, not done.
        """
        if network not in self._data or not math.isfinite(loss):
            log.debug("loss plot: skipping %s %s at step %s", network, loss, step)
            return
        steps, losses = self._data[network]
        steps.append(int(step))
        losses.append(float(loss))
        if not self._timer.isActive():
            self._timer.start()

    def points(self, network: str) -> list[tuple[int, float]]:
        """The ``(step, loss)`` points of ``network`` so far."""
        steps, losses = self._data[network]
        return list(zip(steps, losses, strict=True))

    def clear(self) -> None:
        """Remove every point and redraw."""
        for steps, losses in self._data.values():
            steps.clear()
            losses.clear()
        self.redraw()

    # ------------------------------------------------------------------ drawing
    def redraw(self) -> None:
        """Redraw now (normally called by the throttling timer)."""
        self._timer.stop()
        for key, line in self._lines.items():
            line.set_data(*self._data[key])
        for ax in self.axes:
            ax.relim()
            ax.autoscale_view()
        self.canvas.draw_idle()
        self.draw_count += 1
