"""``register`` as an iterable: :class:`RegistrationSession` runs the stages and yields events.

The CLI progress bar, the Apply widget's progress and the ``timings_s`` of ``report.json`` all
come from the same :class:`~napari_girnet.pipeline.state.StageEvent` s, as training's do from
``CoLearner.steps()``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..core.checkpoint import file_sha256
from ..evaluation.report import Provenance
from .result import RegistrationResult
from .stages import (
    detect_first,
    detect_registered,
    fine_tune,
    instance_optimise,
    map_to_native,
    measure,
    predict,
    refine,
)
from .state import StageEvent, WorkState

__all__ = ["RegistrationCancelled", "RegistrationSession"]


class RegistrationCancelled(Exception):
    """Raised by a :class:`RegistrationSession` stopped with :meth:`~RegistrationSession.cancel`."""


def _plan(state: WorkState) -> list[str]:
    """The stages after "prepare" that this run executes, in order."""
    icfg = state.cfg.inference
    io = state.options.instance_steps > 0 and state.model.net.ndim == 3
    stages = ["fine_tune"] if state.options.fine_tune_steps > 0 else []
    stages += ["detect"]
    stages += ["instance_optimise"] if io else []
    stages += ["detect_registered"] if io and icfg.outlier_passes == 2 else []
    stages += ["predict"] + (["refine"] if icfg.refine else []) + ["map_back"]
    stages += ["metrics"] if state.truth is not None else []
    return stages


_RUN: dict[str, Callable[[WorkState], None]] = {
    "detect": detect_first,
    "instance_optimise": instance_optimise,
    "detect_registered": detect_registered,
    "predict": predict,
    "refine": refine,
    "map_back": map_to_native,
    "metrics": measure,
}


class RegistrationSession:
    """A registration to iterate: ``for event in session`` runs one stage per pair of events.

    Created by :func:`napari_girnet.pipeline.register_steps` (the "prepare" stage has run by
    then: inputs are checked before the first event). Each stage yields a start event
    (``progress=0``), fine-tuning one event per step, and an end event (``done=True``) with the
    stage's seconds. :meth:`cancel` (from any thread) stops the run at the next stage or
    fine-tuning step with :class:`RegistrationCancelled`. After the last event,
    :attr:`result` holds the :class:`RegistrationResult`.
    """

    def __init__(self, state: WorkState, prepare_seconds: float, started: float) -> None:
        self.state = state
        self.stages = ["prepare", *_plan(state)]
        self.timings: dict[str, float] = {"prepare_s": prepare_seconds}
        self.result: RegistrationResult | None = None
        self._started = started
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Stop at the next stage boundary or fine-tuning step (thread-safe)."""
        self._cancel.set()

    def cancel_with(self, event: threading.Event) -> None:
        """Use ``event`` as the cancel flag (e.g. a widget's); setting it is :meth:`cancel`."""
        self._cancel = event

    def _check(self) -> None:
        if self._cancel.is_set():
            raise RegistrationCancelled("registration cancelled")

    def __iter__(self) -> Iterator[StageEvent]:
        total = len(self.stages)
        yield StageEvent("prepare", 0, total, 1.0, self.timings["prepare_s"], True)
        for index, name in enumerate(self.stages[1:], start=1):
            self._check()
            t0 = time.perf_counter()
            yield StageEvent(name, index, total, 0.0, 0.0, False)
            if name == "fine_tune":
                yield from self._fine_tune(index, total, t0)
            else:
                _RUN[name](self.state)
            seconds = time.perf_counter() - t0
            self.timings[f"{name}_s"] = seconds
            yield StageEvent(name, index, total, 1.0, seconds, True)
        self.timings["total_s"] = time.perf_counter() - self._started
        self.result = self._result()

    def _fine_tune(self, index: int, total: int, t0: float) -> Iterator[StageEvent]:
        steps = max(self.state.options.fine_tune_steps, 1)
        for rep in fine_tune(self.state):
            self._check()
            frac = min(rep.step / steps, 1.0)
            yield StageEvent(
                "fine_tune", index, total, frac, time.perf_counter() - t0, False, report=rep
            )

    def run(self, progress: Callable[[StageEvent], None] | None = None) -> RegistrationResult:
        """Run every stage; ``progress`` receives each event. Returns the result."""
        for event in self:
            if progress is not None:
                progress(event)
        assert self.result is not None
        return self.result

    def _result(self) -> RegistrationResult:
        s = self.state
        assert s.prediction is not None and s.detection is not None
        return RegistrationResult(
            scan=s.scan,
            atlas=s.atlas,
            prepared=s.prepared,
            prediction=s.prediction,
            config=s.cfg,
            checkpoint=s.checkpoint,
            provenance=_provenance(s),
            metrics=s.metrics,
            timings=self.timings,
            history=s.history,
            **s.volumes,
            **_raw_outputs(s),
        )


def _raw_outputs(s: WorkState) -> dict[str, Any]:
    """``brain_mask`` / ``bias_corrected`` when the prepare stage extracted the brain."""
    if s.raw is None or not s.raw.decision.get("extracted"):
        return {}
    mask = s.raw.brain_mask
    return {
        "brain_mask": mask.with_array(mask.array.astype("uint8")),
        "bias_corrected": s.raw.bias_corrected,
    }


def _provenance(s: WorkState) -> dict[str, Any]:
    """The run's :class:`~napari_girnet.evaluation.report.Provenance`, as a dict."""
    assert s.detection is not None
    icfg = s.cfg.inference
    return Provenance(
        model=s.model.description,
        model_sha256=s.model.sha256,
        seed=s.cfg.runtime.seed,
        preset=s.cfg.preset,
        config=s.cfg.to_dict(),
        device=str(s.runtime.device),
        precision=s.runtime.precision,
        fine_tune_steps=s.options.fine_tune_steps,
        torch_version=torch.__version__,
        checkpoint=str(s.checkpoint) if s.checkpoint else None,
        checkpoint_sha256=file_sha256(s.checkpoint) if s.checkpoint else None,
        instance_optimisation=s.instance,
        preprocessing=s.raw.decision if s.raw is not None else {},
        lesion_detection={
            **s.detection.info,
            "fill": s.fill_mode,
            "refine": icfg.refine,
            "refine_result": s.refine_info["refine"],
            "refine_growth": s.refine_info["growth"],
        },
    ).to_dict()
