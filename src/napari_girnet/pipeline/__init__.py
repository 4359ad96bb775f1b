"""``register`` as a pipeline of named stages on a working-grid state.

prepare -> [fine_tune] -> detect -> [instance_optimise] -> [detect_registered] -> predict ->
[refine] -> map_back -> [metrics]: :mod:`.stages` holds one small function per stage,
:mod:`.state` the state they share, :mod:`.session` the iterable :class:`RegistrationSession`
that yields :class:`StageEvent` s, :mod:`.result` the :class:`RegistrationResult`.
``napari_girnet.api.register`` drives :func:`register_steps` to the end.

Imports ``core``, ``data``, ``detection`` and ``evaluation``; never ``api``, Qt or napari.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.config import GIRNetConfig
from ..data.atlas import Atlas
from ..detection import InferenceConfig
from .inputs import ScanLike, as_volume, load_atlas_for, prepare, resolve_config
from .models import ModelLike, bundled_model_path
from .output import staged_directory
from .pair import PairInputs, PairSession, pair_steps, prepare_pair
from .pair_result import PairResult
from .result import RegistrationResult
from .session import RegistrationCancelled, RegistrationSession
from .stages import prepare_state, resolve_run
from .state import RegisterOptions, StageEvent, WorkState
from .training import FitSession, fit

__all__ = [
    "FitSession",
    "ModelLike",
    "PairInputs",
    "PairResult",
    "PairSession",
    "RegisterOptions",
    "RegistrationCancelled",
    "RegistrationResult",
    "RegistrationSession",
    "ScanLike",
    "StageEvent",
    "WorkState",
    "as_volume",
    "bundled_model_path",
    "fit",
    "load_atlas_for",
    "pair_steps",
    "prepare",
    "prepare_pair",
    "register_steps",
    "resolve_config",
    "staged_directory",
]


def register_steps(
    scan: ScanLike,
    atlas: ScanLike | str | Atlas = "mni152",
    model: ModelLike = None,
    *,
    config: GIRNetConfig | str | None = None,
    fine_tune_steps: int | None = None,
    instance_steps: int | None = None,
    pseudo_cases: int | None = None,
    exclude_lesions: Sequence[str] = (),
    seed: int = 0,
    device: str | None = None,
    truth: ScanLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    inference: InferenceConfig | dict[str, Any] | None = None,
    skull_strip: str = "auto",
) -> RegistrationSession:
    """Load the model, check and prepare the inputs, and return the session that runs the rest.

    Parameters are those of :func:`napari_girnet.api.register`. The "prepare" stage runs here,
    so bad inputs raise before the first event.

    Raises
    ------
    VolumeError, PreprocessError, CheckpointError, ConfigError
        For bad inputs, with a message naming the input and the problem.
    """
    started = time.perf_counter()
    cfg, loaded, steps = resolve_run(config, model, seed, device, inference, fine_tune_steps)
    n_io = cfg.schedule.instance_steps if instance_steps is None else int(instance_steps)
    options = RegisterOptions(
        fine_tune_steps=steps,
        instance_steps=n_io,
        pseudo_cases=8 if pseudo_cases is None else int(pseudo_cases),
        exclude_lesions=tuple(exclude_lesions),
        checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None,
        skull_strip=_skull_strip_mode(skull_strip),
    )
    state = prepare_state(scan, atlas, truth, cfg, loaded, options)
    return RegistrationSession(state, time.perf_counter() - started, started)


def _skull_strip_mode(mode: str) -> str:
    """Check the ``skull_strip`` argument (``"auto"``, ``"yes"`` or ``"no"``)."""
    if mode not in ("auto", "yes", "no"):
        raise ValueError(f"skull_strip must be 'auto', 'yes' or 'no', got {mode!r}")
    return mode
