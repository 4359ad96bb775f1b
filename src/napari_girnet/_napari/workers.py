"""Background jobs of the GIRNet widgets and the small plumbing the three widgets share.

Threading model (napari's ``napari.qt.threading`` generator workers)
-------------------------------------------------------------------
- A widget reads its controls and layers **on the GUI thread** into a frozen job dataclass
  (:class:`TrainJob`, :class:`ApplyJob`) holding plain values and
  :class:`~napari_girnet.data.volume.Volume` objects, never layers or widgets.
- The job runs in a generator (:func:`train_steps`, :func:`apply_steps`) that the widget hands
  to :func:`napari.qt.threading.create_worker`. Each ``yield`` becomes a ``yielded`` signal
  handled on the GUI thread (and advances the activity-dock progress bar); the generator's
  ``return`` value arrives with ``returned``. Only those handlers touch layers and widgets.
- Stopping is cooperative and never relies on ``worker.quit()`` (superqt's quit abandons the
  generator without running its cleanup): training stops through
  :meth:`FitSession.request_stop <napari_girnet.api.FitSession.request_stop>` via
  :class:`TrainControl`, so the engine writes ``last.pt`` and yields a final ``"stopped"``
  report; applying iterates :func:`napari_girnet.api.register_steps` and checks a
  :class:`threading.Event` between stages (and fine-tuning steps). (The activity dock's cancel
  button still calls ``worker.quit()``; the widgets handle its ``aborted`` signal, and training
  keeps the last periodic ``last.pt``. Closing a widget stops its run the cooperative way.)
- Failures are re-raised as :class:`TaskError` with a one-line reason (the original exception
  chained). The widget's ``errored`` handler shows that line with ``show_error`` and resets its
  state. (napari 0.9.2's ``_NotifyingMixin`` is listed after the Qt base classes in the
  workers' MRO, so its ``__init__`` never runs and worker errors are *not* relayed to
  notifications; and superqt swallows a ``RuntimeError`` escaping a generator worker without
  emitting ``errored`` or ``finished``, hence every exception is wrapped in ``TaskError``.)
- GPU memory is released at the end of every job (:func:`free_memory`).
- Pair mode (:func:`pair_steps`) calls :func:`napari_girnet.api.register_pair`, which reports
  through a ``progress`` callback instead of being a generator; it runs in one helper thread
  started by the worker, its events travel through a queue to the worker's ``yield``, and
  cancelling raises :class:`~napari_girnet.api.RegistrationCancelled` from the callback at the
  next event (stage or fine-tuning step).

"Last trained" model, "last pair result"
----------------------------------------
:func:`remember_trained` / :func:`last_trained` keep, per viewer, the checkpoint of the last
training run (a :class:`weakref.WeakKeyDictionary` keyed by the underlying viewer, so closing a
viewer forgets it). The Train widget writes it, the Apply widget's "last trained" model reads it.
:func:`remember_pair` / :func:`last_pair` do the same for the last pair-mode result of the
Apply widget, which the Evaluate widget offers as a displacement field source.

Shared GUI-thread helpers
-------------------------
:class:`LayerCombo` / :class:`LayerChecklist` (layer choices kept in sync with the viewer),
:class:`TargetCombo` (atlas, template layers and "fixed scan" layers for pair mode) and
:func:`add_or_update_layers` (layer data tuples -> layers, live previews updated in place).
"""

from __future__ import annotations

import gc
import logging
import math
import queue
import threading
import time
import weakref
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QComboBox, QListWidget, QListWidgetItem, QWidget

from .. import api
from ..core.colearn import TrainingReport
from ..data.volume import Volume
from .layers import pair_moving_result

__all__ = [
    "FIXED_PREFIX",
    "ApplyJob",
    "ApplyOutcome",
    "LayerChecklist",
    "LayerCombo",
    "PairJob",
    "RegistrationCancelled",
    "TargetCombo",
    "TaskError",
    "TrainControl",
    "TrainJob",
    "TrainOutcome",
    "TrainStep",
    "add_or_update_layers",
    "apply_steps",
    "available_devices",
    "default_preset",
    "format_mm",
    "free_memory",
    "landmark_tre",
    "landmark_tre_before_after",
    "last_pair",
    "last_trained",
    "mask_metrics",
    "one_line",
    "pair_steps",
    "remember_pair",
    "remember_trained",
    "train_steps",
]

log = logging.getLogger(__name__)

LayerDataTuple = tuple  # (data, kwargs, layer_type), as napari's readers return


# ----------------------------------------------------------------------------- errors, devices
class TaskError(Exception):
    """A background job failed; the message is one line for the notification.

    Deliberately not a ``RuntimeError``: superqt takes a ``RuntimeError`` returned by a worker
    for a deleted Qt object and only warns, without emitting ``errored``.
    """


RegistrationCancelled = api.RegistrationCancelled


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``"TypeName: first line of the message"``, cut to ``limit`` characters."""
    text = str(exc).strip().splitlines()
    msg = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return msg if len(msg) <= limit else msg[: limit - 1] + "…"


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def available_devices() -> list[str]:
    """Device choices for the widgets: ``"auto"``, ``"cpu"``, then the accelerators present."""
    import torch

    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def default_preset() -> str:
    """``"gpu-1mm"`` when CUDA is available, ``"cpu-2mm"`` otherwise."""
    return "gpu-1mm" if _cuda_available() else "cpu-2mm"


def free_memory() -> None:
    """Collect garbage and return cached CUDA memory to the driver (after a job)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover - never let cleanup fail a job
        log.debug("could not empty the CUDA cache", exc_info=True)


# ----------------------------------------------------------------------------- "last trained"
_TRAINED: weakref.WeakKeyDictionary[Any, Path] = weakref.WeakKeyDictionary()


def _unwrap(viewer: Any) -> Any:
    """The viewer behind napari's ``PublicOnlyProxy`` (plugins receive proxies)."""
    return getattr(viewer, "__wrapped__", viewer)


def remember_trained(viewer: Any, checkpoint: str | Path) -> None:
    """Record ``checkpoint`` as the model last trained in ``viewer``."""
    _TRAINED[_unwrap(viewer)] = Path(checkpoint)


def last_trained(viewer: Any) -> Path | None:
    """The checkpoint of the last training run in ``viewer`` (None if none yet)."""
    return _TRAINED.get(_unwrap(viewer))


_PAIRS: weakref.WeakKeyDictionary[Any, tuple[Any, str, str]] = weakref.WeakKeyDictionary()


def remember_pair(viewer: Any, pair: Any, moving_name: str, fixed_name: str) -> None:
    """Record ``pair`` (a :class:`napari_girnet.api.PairResult`) as the last pair-mode result in
    ``viewer``, with the names of its moving and fixed layers (only the latest is kept)."""
    _PAIRS[_unwrap(viewer)] = (pair, moving_name, fixed_name)


def last_pair(viewer: Any) -> tuple[Any, str, str] | None:
    """``(pair_result, moving_layer_name, fixed_layer_name)`` of the last pair-mode run in
    ``viewer`` (None if none yet)."""
    return _PAIRS.get(_unwrap(viewer))


# ----------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainJob:
    """Everything a training run needs, gathered on the GUI thread.

    Attributes
    ----------
    scans : tuple of Volume
        Training scans (canonical RAS volumes from the scan layers).
    scan_names : tuple of str
        Their layer names (preview layers are named after the first).
    atlas : Volume or str
        ``"mni152"`` or a custom template volume.
    preset : str
        Config preset name.
    steps : int
        Co-learning steps (the schedule length; resuming continues up to it).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    seed : int
    checkpoint_dir : Path
        ``last.pt`` goes there; an existing one is resumed.
    pseudo_cases : int
    init : Path or None
        Initial weights (bundled model) for a fresh run.
    preview_every : int
        Preview period in steps (0 = none).
    """

    scans: tuple[Volume, ...]
    scan_names: tuple[str, ...]
    atlas: Volume | str
    preset: str
    steps: int
    device: str
    seed: int
    checkpoint_dir: Path
    pseudo_cases: int = 8
    init: Path | None = None
    preview_every: int = 25

    def total_steps(self) -> int:
        """Steps the progress bar counts: InpNet pretraining (if any) plus co-learning."""
        cfg = api.resolve_config(self.preset)
        return cfg.schedule.pretrain_inp_steps + self.steps


@dataclass(frozen=True)
class TrainStep:
    """One yielded training step: the report (without its raw preview) and preview volumes.

    ``preview`` maps the keys of :meth:`FitSession.preview_volumes
    <napari_girnet.api.FitSession.preview_volumes>` to volumes / fields on the first scan's
    native grid, or is None on steps without a preview. ``native`` is that scan's grid.
    """

    report: TrainingReport
    preview: dict[str, Any] | None = None
    native: Volume | None = None


@dataclass(frozen=True)
class TrainOutcome:
    """What a training run returns (the worker's ``returned`` value).

    ``report`` is the final ``"stopped"``/``"finished"`` report (None when stopped before the
    first step), ``checkpoint`` the ``last.pt`` to use, ``steps_run`` the steps of this run.
    """

    report: TrainingReport | None
    checkpoint: Path | None
    steps_run: int


class TrainControl:
    """Thread-safe stop switch shared by the Train widget and its worker.

    The session only exists inside the worker (``api.fit`` prepares the scans there), so the
    widget asks this object to stop: before the session exists the request is remembered and
    the worker returns right after preparation; afterwards it is forwarded to
    ``session.request_stop()``, which makes the engine save ``last.pt`` and yield a final
    ``"stopped"`` report at the next step boundary.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._session: api.FitSession | None = None
        self._stop = False

    @property
    def stop_requested(self) -> bool:
        return self._stop

    def request_stop(self) -> None:
        """Ask the run to stop at the next step (any thread)."""
        with self._lock:
            self._stop = True
            if self._session is not None:
                self._session.request_stop()

    def attach(self, session: api.FitSession) -> bool:
        """Register the session; False if a stop was requested already."""
        with self._lock:
            self._session = session
            return not self._stop

    def detach(self) -> None:
        with self._lock:
            self._session = None


def train_steps(job: TrainJob, control: TrainControl) -> Generator[TrainStep, None, TrainOutcome]:
    """Worker generator: prepare, then co-learn, yielding one :class:`TrainStep` per step.

    Runs in the worker thread. ``api.fit`` (brain masks, affine alignment, pseudo cases: seconds)
    is called here, not on the GUI thread. Previews are mapped to the first scan's native grid
    here too. The final report is returned, not yielded, so the progress bar counts steps only.

    Raises
    ------
    TaskError
        With a one-line reason, chaining the original exception.
    """
    session = None
    try:
        cfg = api.resolve_config(job.preset, runtime={"preview_every": int(job.preview_every)})
        session = api.fit(
            list(job.scans),
            atlas=job.atlas,
            config=cfg,
            checkpoint_dir=job.checkpoint_dir,
            init=job.init,
            pseudo_cases=int(job.pseudo_cases),
            steps=int(job.steps),
            seed=int(job.seed),
            device=job.device,
            preview=job.preview_every > 0,
        )
        if not control.attach(session):
            log.info("training stopped before the first step")
            return TrainOutcome(None, None, 0)
        native = session.prepared[0].native if session.prepared else None
        final: TrainingReport | None = None
        steps_run = 0
        for report in session:
            if report.is_final:
                final = report
                break
            steps_run += 1
            if control.stop_requested:  # a stop that raced with the start of the loop
                session.request_stop()
            volumes = None
            if report.preview is not None and native is not None:
                volumes = session.preview_volumes(report.preview)
            yield TrainStep(replace(report, preview=None), volumes, native)
        checkpoint = final.checkpoint if final is not None else None
        last = Path(job.checkpoint_dir) / "last.pt"
        if checkpoint is None and last.is_file():
            checkpoint = last  # resumed a run that had already reached its step count
        return TrainOutcome(final, checkpoint, steps_run)
    except Exception as exc:
        raise TaskError(f"GIRNet training failed: {one_line(exc)}") from exc
    finally:
        control.detach()
        del session
        free_memory()


# ----------------------------------------------------------------------------- applying
@dataclass(frozen=True)
class ApplyJob:
    """Everything :func:`napari_girnet.api.register` needs, gathered on the GUI thread.

    ``model`` is a checkpoint path, or None for the bundled model of ``preset`` (then
    ``config=preset``; with a checkpoint the checkpoint's own config is used).
    """

    scan: Volume
    scan_name: str
    atlas: Volume | str
    model: Path | None
    preset: str
    fine_tune_steps: int
    pseudo_cases: int
    refine: bool
    truth: Volume | None
    device: str
    seed: int
    instance_steps: int | None = None
    detector: str | None = None
    skull_strip: str = "auto"


@dataclass(frozen=True)
class PairJob:
    """A pair-mode run (:func:`napari_girnet.api.register_pair`), gathered on the GUI thread.

    ``job`` holds the moving scan (the pre-operative scan, ``job.scan``) and every setting as
    for a single scan (``job.atlas`` and ``job.pseudo_cases`` are not used); ``fixed`` is the
    follow-up scan of the same patient (canonical RAS volume from its layer) and
    ``fixed_name`` its layer name.
    """

    job: ApplyJob
    fixed: Volume
    fixed_name: str

    @property
    def scan_name(self) -> str:
        """The moving layer's name."""
        return self.job.scan_name

    @property
    def fine_tune_steps(self) -> int:
        return self.job.fine_tune_steps


@dataclass(frozen=True)
class ApplyOutcome:
    """The worker's ``returned`` value: the result, or None when cancelled.

    In pair mode ``pair`` is the :class:`napari_girnet.api.PairResult` and ``result`` its
    moving-side :class:`~napari_girnet.api.RegistrationResult` (``pair.registration``).
    """

    result: api.RegistrationResult | None
    cancelled: bool
    seconds: float
    pair: Any = None


def apply_steps(
    job: ApplyJob, cancel: threading.Event
) -> Generator[api.StageEvent, None, ApplyOutcome]:
    """Worker generator: iterate :func:`napari_girnet.api.register_steps`, yield its events.

    Every stage (and fine-tuning step) is one or more :class:`~napari_girnet.api.StageEvent`;
    ``cancel`` is checked between them, so a cancel stops the run at the next stage boundary
    (or fine-tuning step) and nothing is returned but ``cancelled=True``. No helper thread.

    Raises
    ------
    TaskError
        With a one-line reason, chaining the original exception.
    """
    t0 = time.perf_counter()
    try:
        session = api.register_steps(
            job.scan,
            atlas=job.atlas,
            model=job.model,
            config=job.preset if job.model is None else None,
            fine_tune_steps=int(job.fine_tune_steps),
            instance_steps=job.instance_steps,
            pseudo_cases=int(job.pseudo_cases),
            seed=int(job.seed),
            device=job.device,
            truth=job.truth,
            inference={"refine": bool(job.refine), "detector": job.detector or "auto"},
            skull_strip=job.skull_strip,
        )
        session.cancel_with(cancel)
        yield from session
        if cancel.is_set():
            return ApplyOutcome(None, True, time.perf_counter() - t0)
        return ApplyOutcome(session.result, False, time.perf_counter() - t0)
    except RegistrationCancelled:
        return ApplyOutcome(None, True, time.perf_counter() - t0)
    except Exception as exc:
        raise TaskError(f"GIRNet registration failed: {one_line(exc)}") from exc
    finally:
        free_memory()


_DONE = object()


def pair_steps(
    job: PairJob, cancel: threading.Event, poll_s: float = 0.05
) -> Generator[api.StageEvent, None, ApplyOutcome]:
    """Worker generator of pair mode: run :func:`napari_girnet.api.register_pair`, yield its events.

    ``register_pair`` reports through a ``progress`` callback, so it runs in one helper thread;
    each :class:`~napari_girnet.api.StageEvent` is passed through a queue and yielded here (in
    the worker thread). ``cancel`` is checked by the callback at every event, which raises
    :class:`~napari_girnet.api.RegistrationCancelled` so the run stops at the next stage or
    fine-tuning step; the outcome is then ``cancelled=True``. Closing the generator
    (``worker.quit()``) sets ``cancel`` too, so an abandoned run stops as well.

    Parameters
    ----------
    job : PairJob
    cancel : threading.Event
    poll_s : float
        How often (seconds) the worker looks at the helper thread between events.

    Returns
    -------
    ApplyOutcome
        ``pair`` = the PairResult and ``result`` = its moving-side result
        (:func:`~napari_girnet._napari.layers.pair_moving_result`), or both None when cancelled.

    Raises
    ------
    TaskError
        With a one-line reason, chaining the original exception (also when
        ``api.register_pair`` is missing).
    """
    t0 = time.perf_counter()
    events: queue.Queue[Any] = queue.Queue()
    box: dict[str, Any] = {}
    base = job.job

    def progress(event: api.StageEvent) -> None:
        if cancel.is_set():
            raise RegistrationCancelled("pair registration cancelled")
        events.put(event)

    def run() -> None:
        try:
            register_pair = getattr(api, "register_pair", None)
            if register_pair is None:
                raise NotImplementedError(
                    "this napari-girnet has no api.register_pair (pair mode unavailable)"
                )
            box["pair"] = register_pair(
                base.scan,
                job.fixed,
                base.model,
                config=base.preset if base.model is None else None,
                fine_tune_steps=int(base.fine_tune_steps),
                instance_steps=base.instance_steps,
                seed=int(base.seed),
                device=base.device,
                truth=base.truth,
                inference={"refine": bool(base.refine), "detector": base.detector or "auto"},
                skull_strip=base.skull_strip,
                progress=progress,
            )
        except BaseException as exc:  # handed to the worker thread
            box["error"] = exc
        finally:
            events.put(_DONE)

    helper = threading.Thread(target=run, name="girnet-register-pair", daemon=True)
    helper.start()
    try:
        while True:
            try:
                item = events.get(timeout=poll_s)
            except queue.Empty:
                continue
            if item is _DONE:
                break
            yield item
        error = box.get("error")
        if isinstance(error, RegistrationCancelled) or cancel.is_set():
            return ApplyOutcome(None, True, time.perf_counter() - t0)
        if error is not None:
            raise TaskError(f"GIRNet pair registration failed: {one_line(error)}") from error
        pair = box["pair"]
        result = pair_moving_result(pair)
        return ApplyOutcome(result, False, time.perf_counter() - t0, pair=pair)
    finally:
        if helper.is_alive():  # generator closed early (worker.quit()): stop the helper too
            cancel.set()
        free_memory()


# ----------------------------------------------------------------------------- evaluation
def _pair(
    ids_a: Sequence[str] | None,
    pts_a: np.ndarray,
    ids_b: Sequence[str] | None,
    pts_b: np.ndarray,
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Pair two point sets by id (both have ids) or by order (otherwise)."""
    from ..data.landmarks import Landmarks, pair_landmarks

    pts_a = np.asarray(pts_a, dtype=np.float64).reshape(-1, 3)
    pts_b = np.asarray(pts_b, dtype=np.float64).reshape(-1, 3)
    if ids_a is not None and ids_b is not None and len(ids_a) and len(ids_b):
        return pair_landmarks(Landmarks(tuple(ids_a), pts_a), Landmarks(tuple(ids_b), pts_b))
    if len(pts_a) != len(pts_b):
        raise ValueError(
            f"cannot pair {len(pts_a)} moving with {len(pts_b)} fixed points by order; "
            "give both layers an 'id' feature or the same number of points"
        )
    if len(pts_a) == 0:
        raise ValueError("no landmarks to evaluate")
    return tuple(str(i + 1) for i in range(len(pts_a))), pts_a, pts_b


def landmark_tre(
    moving_ids: Sequence[str] | None,
    moving_mm: np.ndarray,
    fixed_ids: Sequence[str] | None,
    fixed_mm: np.ndarray,
    field: str | Path | None = None,
) -> dict[str, Any]:
    """Target registration error of paired landmarks, optionally through a displacement field.

    Parameters
    ----------
    moving_ids, fixed_ids : sequence of str or None
        Landmark ids; when both are given the points are paired by id, otherwise by order.
    moving_mm, fixed_mm : numpy.ndarray
        ``(N, 3)`` world RAS mm.
    field : path, optional
        Displacement field NIfTI on the fixed grid mapping fixed points to moving points
        (ITK or girnet voxel convention, read by
        :func:`~napari_girnet.data.nifti.read_displacement`): a fixed point ``p`` maps to
        ``p + u(p)``. Without it the fixed points are compared as they are.

    Returns
    -------
    dict
        ``mean``, ``sd``, ``median``, ``max`` (mm), ``n`` and ``per_landmark`` ``{id: mm}``
        (ids in pairing order), as ``api.evaluate``'s ``tre_mm``.

    Raises
    ------
    ValueError
        Unpairable points (:class:`~napari_girnet.data.landmarks.LandmarkError` for id
        mismatches) or a bad field file (``NiftiError``).
    """
    from ..evaluation.measure import landmark_tre as tre_of_pairs

    ids, moving, fixed = _pair(moving_ids, moving_mm, fixed_ids, fixed_mm)
    return tre_of_pairs(ids, moving, fixed, field)


def landmark_tre_before_after(
    moving_ids: Sequence[str] | None,
    moving_mm: np.ndarray,
    fixed_ids: Sequence[str] | None,
    fixed_mm: np.ndarray,
    field: str | Path | tuple[np.ndarray, Volume] | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """TRE of paired landmarks before and after a displacement field.

    Parameters
    ----------
    moving_ids, moving_mm, fixed_ids, fixed_mm
        As :func:`landmark_tre`: ids (paired by id when both are given, else by order) and
        ``(N, 3)`` world RAS mm points.
    field : path, ``(field_mm, grid)`` or None
        A displacement field NIfTI as in :func:`landmark_tre`, or an in-memory field: ``field_mm``
        ``(3, X, Y, Z)`` RAS millimetres on the voxels of ``grid`` (a
        :class:`~napari_girnet.data.volume.Volume`, any orientation; array axes as its array),
        mapping a fixed point ``p`` to the moving point ``p + field_mm(p)``, e.g. a pair result's
        ``field_fixed_to_moving`` on ``pair.fixed``. Sampled trilinearly; points outside the grid
        take the nearest edge value.

    Returns
    -------
    before, after : dict, dict or None
        TRE summaries (``mean``, ``sd``, ``median``, ``max`` mm, ``n``, ``per_landmark``) of the
        points as they are and through the field (None without a field).

    Raises
    ------
    ValueError
        Unpairable points, a bad field file, or an in-memory field whose shape is not
        ``(3, *grid.shape)``.
    """
    from ..evaluation import metrics

    before = landmark_tre(moving_ids, moving_mm, fixed_ids, fixed_mm, None)
    if field is None:
        return before, None
    if not isinstance(field, tuple):
        return before, landmark_tre(moving_ids, moving_mm, fixed_ids, fixed_mm, field)
    field_mm, grid = field
    field_mm = np.asarray(field_mm, dtype=np.float64)
    if field_mm.shape != (3, *grid.shape):
        raise ValueError(
            f"field must have shape (3, {', '.join(map(str, grid.shape))}) on the fixed grid "
            f"{grid.name or ''}, got {field_mm.shape}"
        )
    ids, moving, fixed = _pair(moving_ids, moving_mm, fixed_ids, fixed_mm)
    mapped = fixed + metrics.sample_displacement(field_mm, grid.world_to_voxel(fixed))
    dist = metrics.tre(mapped, moving)
    after: dict[str, Any] = dict(metrics.tre_summary(dist))
    after["per_landmark"] = {str(i): float(d) for i, d in zip(ids, dist, strict=True)}
    return before, after


def mask_metrics(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], names: tuple[str, str]
) -> dict[str, Any]:
    """Dice, HD95 (mm) and volumes (mm³) of two masks on the same grid (nonzero = lesion);
    :func:`napari_girnet.evaluation.measure.mask_metrics`, the API's metrics path.

    Raises
    ------
    ValueError
        If the shapes differ (the message names both layers).
    """
    from ..evaluation.measure import mask_metrics as measure_masks

    return measure_masks(pred, truth, spacing, names)


def format_mm(value: float) -> str:
    """``"4.20"``, ``"inf"`` or ``"nan"``."""
    return f"{value:.2f}" if math.isfinite(value) else str(value)


# ----------------------------------------------------------------------------- GUI-thread helpers
def add_or_update_layers(
    viewer: Any, layer_data: Iterable[LayerDataTuple], update: bool = False
) -> list[Any]:
    """Add layers from ``(data, kwargs, type)`` tuples.

    GUI thread only. With ``update``, an existing layer of the same name and type gets the new
    ``data`` (and ``metadata``/``features`` when given) instead, so its display settings
    survive (live previews). Without it, napari makes the names unique (``"name [1]"``).

    Returns
    -------
    list
        The added or updated layers, in order.
    """
    from napari.layers import Layer

    out = []
    for item in layer_data:
        data, kwargs, layer_type = (*item, None, None)[:3]
        kwargs = dict(kwargs or {})
        layer_type = layer_type or "image"
        name = kwargs.get("name")
        existing = viewer.layers[name] if update and name and name in viewer.layers else None
        # __class__, not type(): plugin widgets see layers through napari's PublicOnlyProxy
        if existing is not None and existing.__class__.__name__.lower() == layer_type.lower():
            existing.data = data
            if "metadata" in kwargs:
                existing.metadata = kwargs["metadata"]
            if "features" in kwargs:
                existing.features = kwargs["features"]
            out.append(existing)
            continue
        out.append(viewer.add_layer(Layer.create(data, kwargs, layer_type)))
    return out


class _LayerSync:
    """Mixin: call ``self.refresh()`` when layers are added, removed, moved or renamed.

    Connects bound methods only: napari's event emitters hold them weakly and drop them when
    the Qt object is deleted, so a closed widget is neither kept alive nor called.
    """

    def _sync_with(self, viewer: Any) -> None:
        events = viewer.layers.events
        events.inserted.connect(self._on_inserted)
        for name in ("removed", "moved", "reordered"):
            emitter = getattr(events, name, None)
            if emitter is not None:
                emitter.connect(self.refresh)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)

    def _on_inserted(self, event: Any) -> None:
        event.value.events.name.connect(self.refresh)
        self.refresh()

    def refresh(self, *_: Any) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class LayerCombo(_LayerSync, QComboBox):
    """Layer names of one type, kept in sync with the viewer's layer list.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    layer_type : type or tuple of types
        E.g. ``napari.layers.Image``.
    extra : sequence of str
        Fixed entries listed first (e.g. ``"MNI152 (bundled)"``, ``"(none)"``).
    """

    def __init__(
        self,
        viewer: Any,
        layer_type: type[Any] | tuple[type[Any], ...],
        extra: Sequence[str] = (),
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._type = layer_type
        self._extra = tuple(extra)
        self._sync_with(viewer)
        self.refresh()

    def layer_names(self) -> list[str]:
        return [ly.name for ly in self._viewer.layers if isinstance(ly, self._type)]

    def refresh(self, *_: Any) -> None:
        """Rebuild the entries, keeping the current choice when it still exists."""
        current = self.currentText()
        names = [*self._extra, *self.layer_names()]
        if names == [self.itemText(i) for i in range(self.count())]:
            return
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)
        self.blockSignals(False)
        if self.currentText() != current:
            self.currentTextChanged.emit(self.currentText())

    def layer(self) -> Any | None:
        """The chosen layer, or None when a fixed entry (or nothing) is chosen."""
        name = self.currentText()
        if not name or name in self._extra or name not in self._viewer.layers:
            return None
        return self._viewer.layers[name]


FIXED_PREFIX = "fixed scan: "
"""Prefix of the :class:`TargetCombo` entries that choose pair mode."""


class TargetCombo(LayerCombo):
    """Registration target: fixed entries (the bundled atlas), Image layers used as a template,
    and the same Image layers offered as ``"fixed scan: <name>"`` (a follow-up scan of the same
    patient; choosing one means pair mode).

    GIRNet result layers (``metadata["girnet"]["role"]``) are not offered as fixed scans, and a
    layer whose own name starts with :data:`FIXED_PREFIX` is ambiguous and is only offered as a
    template.
    """

    def layer_names(self) -> list[str]:
        names = super().layer_names()
        scans = [
            ly.name
            for ly in self._viewer.layers
            if isinstance(ly, self._type)
            and "role" not in (ly.metadata.get("girnet") or {})
            and not ly.name.startswith(FIXED_PREFIX)
        ]
        return [*names, *(FIXED_PREFIX + n for n in scans)]

    def is_pair(self) -> bool:
        """True when a ``"fixed scan: ..."`` entry is chosen."""
        text = self.currentText()
        return text.startswith(FIXED_PREFIX) and text not in self._viewer.layers

    def layer(self) -> Any | None:
        """The template layer (None for the bundled atlas or a fixed scan)."""
        return None if self.is_pair() else super().layer()

    def fixed_layer(self) -> Any | None:
        """The fixed scan's layer in pair mode (None otherwise)."""
        if not self.is_pair():
            return None
        name = self.currentText()[len(FIXED_PREFIX) :]
        found = [ly for ly in self._viewer.layers if ly.name == name]
        return found[0] if found else None

    def set_fixed(self, name: str) -> None:
        """Choose the layer ``name`` as the fixed scan (pair mode)."""
        self.refresh()
        self.setCurrentText(FIXED_PREFIX + name)


class LayerChecklist(_LayerSync, QListWidget):
    """Checkable list of layer names of one type, kept in sync with the viewer.

    When nothing is ticked, the first layer that appears is ticked, so a single scan is used
    without any click.
    """

    checked_changed = Signal()

    def __init__(self, viewer: Any, layer_type: type[Any], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._type = layer_type
        self.itemChanged.connect(self._item_changed)
        self._sync_with(viewer)
        self.refresh()

    def _item_changed(self, *_: Any) -> None:
        self.checked_changed.emit()

    def refresh(self, *_: Any) -> None:
        checked = set(self.checked_names())
        names = [ly.name for ly in self._viewer.layers if isinstance(ly, self._type)]
        if names == [item.text() for item in self._items()]:
            return
        if not checked & set(names) and names:
            checked = {names[0]}
        self.blockSignals(True)
        self.clear()
        for name in names:
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            on = name in checked
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
            self.addItem(item)
        self.blockSignals(False)
        self.checked_changed.emit()

    def _items(self) -> list[QListWidgetItem]:
        items = (self.item(i) for i in range(self.count()))
        return [item for item in items if item is not None]

    def checked_names(self) -> list[str]:
        return [item.text() for item in self._items() if item.checkState() == Qt.CheckState.Checked]

    def set_checked(self, names: Iterable[str]) -> None:
        wanted = set(names)
        for item in self._items():
            on = item.text() in wanted
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)

    def checked_layers(self) -> list[Any]:
        return [self._viewer.layers[n] for n in self.checked_names() if n in self._viewer.layers]
