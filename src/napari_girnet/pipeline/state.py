"""The working-grid state the stages of ``register`` pass along, and the events they yield."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.colearn import TrainingReport
from ..core.config import GIRNetConfig
from ..core.losses import RegistrationFields
from ..core.model import Prediction
from ..core.runtime import Runtime
from ..data.atlas import Atlas
from ..data.preprocess import PreparedScan
from ..data.skullstrip import RawPreprocessResult
from ..data.volume import Volume
from ..detection import Detection
from .models import LoadedModel

__all__ = ["RegisterOptions", "StageEvent", "WorkState"]


@dataclass(frozen=True)
class RegisterOptions:
    """The per-run choices of :func:`napari_girnet.api.register` that are not in the config.

    ``fine_tune_steps`` / ``instance_steps`` are resolved (never None); ``pseudo_cases`` are
    mixed into fine-tuning; ``checkpoint_dir`` receives the fine-tuned ``last.pt``;
    ``skull_strip`` is ``"auto"`` (brain extraction and N4 only when the scan is not already
    skull-stripped), ``"yes"`` or ``"no"`` (:func:`napari_girnet.data.skullstrip.preprocess_raw`).
    """

    fine_tune_steps: int
    instance_steps: int
    pseudo_cases: int
    exclude_lesions: Sequence[str] = ()
    checkpoint_dir: Path | None = None
    skull_strip: str = "auto"


@dataclass(frozen=True)
class StageEvent:
    """One step of a registration, yielded by :class:`~napari_girnet.pipeline.RegistrationSession`.

    Attributes
    ----------
    stage : str
        ``"prepare"``, ``"fine_tune"``, ``"detect"``, ``"instance_optimise"``,
        ``"detect_registered"``, ``"predict"``, ``"refine"``, ``"map_back"`` or ``"metrics"``.
    index, total : int
        Position of the stage among the stages this run executes (0-based) and their number.
    progress : float
        Fraction of this stage done, in [0, 1] (1.0 when the stage ends; fine-tuning reports
        every step).
    seconds : float
        Wall-clock seconds spent in this stage so far (the stage's time when it ends).
    done : bool
        True on the event that ends the stage.
    report : TrainingReport or None
        The co-learning report of a fine-tuning step.
    """

    stage: str
    index: int
    total: int
    progress: float
    seconds: float
    done: bool
    report: TrainingReport | None = None

    @property
    def overall(self) -> float:
        """Fraction of the whole run done, counting every stage as one unit."""
        return (self.index + self.progress) / max(self.total, 1)


@dataclass
class WorkState:
    """Everything the stages share, on the working grid (the atlas grid).

    Tensors are ``(1, 1, X, Y, Z)`` (2D presets: the same volumes; the networks run slice by
    slice) on ``runtime.device``; ``scan_range`` is the intensity normalisation's
    ``(p0.5, p99.5)`` in the scan's units (set by the prepare stage, used at map-back).
    ``fields`` holds the instance-optimised registration fields (``phi_ts`` / ``phi_st`` are
    displacements in voxels, not maps). Each stage fills the attributes it produces.
    """

    cfg: GIRNetConfig
    model: LoadedModel
    options: RegisterOptions
    runtime: Runtime
    scan: Volume
    atlas: Atlas
    prepared: PreparedScan
    truth: Volume | None
    scan_range: tuple[float, float]
    scan_t: torch.Tensor
    atlas_t: torch.Tensor
    brain_t: torch.Tensor
    history: list[dict[str, Any]] = field(default_factory=list)
    raw: RawPreprocessResult | None = None
    checkpoint: Path | None = None
    detection: Detection | None = None
    fields: RegistrationFields | None = None
    instance: dict[str, Any] = field(default_factory=dict)
    prediction: Prediction | None = None
    refine_info: dict[str, Any] = field(default_factory=lambda: {"refine": "off", "growth": 1.0})
    volumes: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def fill_mode(self) -> str:
        """``"inpnet"`` or ``"atlas"``: ``inference.fill``, with ``"auto"`` resolved (the
        matched atlas for random weights, InpNet otherwise)."""
        fill = self.cfg.inference.fill
        if fill != "auto":
            return fill
        return "atlas" if self.model.untrained else "inpnet"
