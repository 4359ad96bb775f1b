"""Scan-to-scan ("pair") registration: a patient's pre-operative scan onto its follow-up.

Both scans are brain-masked, bias-corrected when raw and normalised
(:func:`~napari_girnet.data.skullstrip.preprocess_raw`). The fixed scan is put on the preset's
MNI152 working grid by its own affine alignment to MNI152: this only orients the working grid,
and the fixed brain on it plays GIRNet's atlas ``T``. The moving scan is aligned directly to the
fixed scan (coarse rotation search, rigid, similarity, affine:
:func:`~napari_girnet.data.preprocess.affine_align` with the settings of ``prepare_scan``; no
atlas in that loop), composed with the fixed scan's alignment onto the working grid, and the
usual stages of ``register`` (:class:`~napari_girnet.pipeline.session.RegistrationSession`) run
on the pair. The lesion is segmented and inpainted in the MOVING scan only; a lesion also
present in the fixed scan is not masked and still counts in the LNCC similarity. Finally the
working-grid fields are composed with the fixed scan's affine to MNI152 to give fields and
volumes in the fixed scan's own world (:mod:`.pair_result`). Reference: Liu & Gu, GIRNet,
MICCAI 2023 (networks); longitudinal use as in BraTS-Reg (Baheti et al., 2021).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..core.config import GIRNetConfig
from ..core.runtime import resolve_runtime
from ..data.atlas import Atlas, load_atlas
from ..data.preprocess import (
    ALIGNMENT_MIN_QUALITY,
    PREPARE_ALIGNMENT,
    AffineAlignment,
    PreparedScan,
    PreprocessError,
    affine_align,
    normalize_intensity,
    prepare_scan,
    to_working_grid,
)
from ..data.skullstrip import RawPreprocessResult, preprocess_raw
from ..data.volume import Volume, VolumeError, check_brain_size, describe_grid_mismatch
from ..detection import InferenceConfig
from .inputs import ScanLike, as_volume, to_tensor
from .mapback import intensity_range
from .models import ModelLike
from .pair_result import (
    PairResult,
    fixed_to_moving_field,
    jacobian_on_fixed,
    moving_to_fixed_field,
    pair_tre,
    read_landmark_pair,
    warp_to_grid,
)
from .session import RegistrationSession
from .stages import resolve_run
from .state import RegisterOptions, StageEvent, WorkState

__all__ = ["PairInputs", "PairSession", "pair_steps", "prepare_pair"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairInputs:
    """Both scans of a pair, prepared (:func:`prepare_pair`).

    Attributes
    ----------
    moving, fixed : Volume
        The scans as given, canonical RAS on their native grids.
    fixed_prepared : PreparedScan
        The fixed scan on the working grid by its own affine alignment to MNI152
        (``alignment.matrix``: MNI world -> fixed world, RAS mm).
    fixed_atlas : Atlas
        The fixed brain (image in [0, 1], 0 outside the mask) and mask on the working grid:
        GIRNet's ``T``.
    moving_prepared : PreparedScan
        The moving scan on the working grid; ``alignment.matrix`` = ``direct.matrix @
        fixed_prepared.alignment.matrix`` (MNI world -> moving world).
    direct : AffineAlignment
        The moving scan's affine alignment to the fixed scan (fixed world -> moving world).
    moving_raw, fixed_raw : RawPreprocessResult
        The skull-strip / N4 decisions and outputs of both scans (native grids).
    """

    moving: Volume
    fixed: Volume
    fixed_prepared: PreparedScan
    fixed_atlas: Atlas
    moving_prepared: PreparedScan
    direct: AffineAlignment
    moving_raw: RawPreprocessResult
    fixed_raw: RawPreprocessResult


def _scan(source: ScanLike, role: str) -> Volume:
    """One scan of the pair as a canonical volume named by its file (or its role)."""
    is_path = isinstance(source, str | os.PathLike)
    vol = as_volume(source, name=str(source) if is_path else f"{role} scan")
    thin = [n for n in vol.shape if n == 1]
    if thin:
        raise VolumeError(
            f"{vol.name}: {role} scan is a 2D slice (shape {vol.shape}); pair registration "
            "needs two 3D scans"
        )
    return check_brain_size(vol)


def _brain(raw: RawPreprocessResult, scan: Volume) -> Volume:
    """The image ``prepare_scan`` receives: the extracted brain, or the scan as given."""
    return raw.brain if raw.decision.get("extracted") else scan


def prepare_pair(
    moving: ScanLike,
    fixed: ScanLike,
    cfg: GIRNetConfig,
    *,
    seed: int = 0,
    skull_strip: str = "auto",
) -> PairInputs:
    """Preprocess both scans, put the fixed scan on ``cfg``'s working grid and align the moving
    scan directly to it.

    Raises
    ------
    VolumeError
        A 2D or too-small scan, NaN, a bad affine (the message names the scan).
    PreprocessError, SkullStripError
        An empty brain mask or a failed alignment (naming the scan).
    """
    mov = _scan(moving, "moving")
    fix = _scan(fixed, "fixed")
    fixed_raw = preprocess_raw(fix, mode=skull_strip, seed=seed)  # type: ignore[arg-type]
    moving_raw = preprocess_raw(mov, mode=skull_strip, seed=seed)  # type: ignore[arg-type]
    grid = load_atlas(cfg.data.atlas_preset)
    fixed_prepared = prepare_scan(
        _brain(fixed_raw, fix), grid, seed=seed, mask=fixed_raw.brain_mask
    )
    if not fixed_prepared.mask.array.any():
        raise PreprocessError(f"{fix.name}: no brain left on the working grid after alignment")
    fixed_atlas = Atlas(
        image=fixed_prepared.image.with_array(fixed_prepared.image.array, name=f"{fix.name} brain"),
        mask=fixed_prepared.mask,
        preset=f"pair:{grid.preset}",
    )
    moving_prepared, direct = _align_to_fixed(
        _brain(moving_raw, mov), moving_raw.brain_mask, fixed_prepared, fixed_atlas, seed
    )
    return PairInputs(
        mov, fix, fixed_prepared, fixed_atlas, moving_prepared, direct, moving_raw, fixed_raw
    )


def _align_to_fixed(
    moving: Volume,
    moving_mask: Volume,
    fixed_prepared: PreparedScan,
    fixed_atlas: Atlas,
    seed: int,
) -> tuple[PreparedScan, AffineAlignment]:
    """The moving scan aligned to the fixed scan's native brain, then put on the working grid."""
    mask = moving_mask.with_array(np.asarray(moving_mask.array).astype(bool))
    if not mask.array.any():
        raise PreprocessError(f"{moving.name}: empty brain mask")
    normalised = normalize_intensity(moving, mask)
    fixed_norm = normalize_intensity(fixed_prepared.native, fixed_prepared.native_mask)
    direct = affine_align(
        normalised,
        fixed_norm,
        moving_mask=mask,
        fixed_mask=fixed_prepared.native_mask,
        seed=seed,
        **PREPARE_ALIGNMENT,
    )
    warnings: tuple[str, ...] = ()
    if not direct.ok:
        message = (
            f"{moving.name}: poor affine alignment to the fixed scan (brain-mask Dice "
            f"{direct.quality:.2f} < {ALIGNMENT_MIN_QUALITY}): check that both scans are the "
            "same patient's brain and their orientation labels"
        )
        logger.warning(message)
        warnings = (message,)
    composed = replace(direct, matrix=direct.matrix @ fixed_prepared.alignment.matrix)
    grid_mask = to_working_grid(mask, fixed_atlas, composed, order=0)
    if not grid_mask.array.any():
        raise PreprocessError(f"{moving.name}: no brain left on the working grid after alignment")
    image = to_working_grid(normalised, fixed_atlas, composed, order=1)
    array = np.clip(image.array, 0.0, 1.0)
    array[~grid_mask.array] = 0.0
    prepared = PreparedScan(
        native=moving,
        native_mask=mask,
        alignment=composed,
        image=image.with_array(array),
        mask=grid_mask,
        alignment_ok=direct.ok,
        warnings=warnings,
    )
    return prepared, direct


class PairSession:
    """A pair registration to iterate, like :class:`RegistrationSession` (whose events it
    yields); after the last event :attr:`result` holds the :class:`PairResult`."""

    def __init__(
        self,
        session: RegistrationSession,
        inputs: PairInputs,
        landmarks: tuple[Any, ...] | None,
    ) -> None:
        self.session = session
        self.inputs = inputs
        self.landmarks = landmarks
        self.result: PairResult | None = None

    def cancel(self) -> None:
        """Stop at the next stage boundary (thread-safe)."""
        self.session.cancel()

    def __iter__(self) -> Iterator[StageEvent]:
        yield from self.session
        t0 = time.perf_counter()
        self.result = self._result()
        self.result.timings["map_to_fixed_s"] = time.perf_counter() - t0

    def run(self, progress: Callable[[StageEvent], None] | None = None) -> PairResult:
        """Run every stage; ``progress`` receives each event. Returns the result."""
        for event in self:
            if progress is not None:
                progress(event)
        assert self.result is not None
        return self.result

    def _result(self) -> PairResult:
        reg = self.session.result
        assert reg is not None
        inp = self.inputs
        a_f = np.asarray(inp.fixed_prepared.alignment.matrix)
        working = inp.fixed_atlas.image
        a_m = np.asarray(inp.moving_prepared.alignment.matrix)
        phi_st = reg.prediction.phi_st[0].numpy()
        f2m = fixed_to_moving_field(phi_st, working, inp.fixed, a_f, a_m)
        m2f = moving_to_fixed_field(reg.field_atlas_to_scan, inp.moving, a_f)
        mask = warp_to_grid(reg.lesion_mask, f2m, inp.fixed, order=1)
        tre = None
        files = None
        if self.landmarks is not None:
            ids, mov_mm, fix_mm, files = self.landmarks
            tre = pair_tre(ids, mov_mm, fix_mm, f2m, inp.fixed)
        return PairResult(
            registration=reg,
            fixed=inp.fixed,
            fixed_prepared=inp.fixed_prepared,
            direct_alignment=inp.direct,
            moved=warp_to_grid(inp.moving, f2m, inp.fixed, name="moved_on_fixed"),
            inpainted_on_fixed=warp_to_grid(
                reg.inpainted, f2m, inp.fixed, name="inpainted_on_fixed"
            ),
            lesion_mask_on_fixed=mask.with_array(
                (mask.array > 0.5).astype(np.uint8), name="lesion_mask_on_fixed"
            ),
            jacobian_on_fixed=jacobian_on_fixed(reg.prediction.phi_st, working, inp.fixed_prepared),
            field_fixed_to_moving=f2m,
            field_moving_to_fixed=m2f,
            fixed_preprocessing=dict(inp.fixed_raw.decision),
            timings=dict(self.session.timings),
            tre=tre,
            landmark_files=files,
        )


def pair_steps(
    moving: ScanLike,
    fixed: ScanLike,
    model: ModelLike = None,
    *,
    config: GIRNetConfig | str | None = None,
    fine_tune_steps: int | None = None,
    instance_steps: int | None = None,
    seed: int = 0,
    device: str | None = None,
    truth: ScanLike | None = None,
    inference: InferenceConfig | dict[str, Any] | None = None,
    skull_strip: str = "auto",
    landmarks_moving: str | os.PathLike[str] | None = None,
    landmarks_fixed: str | os.PathLike[str] | None = None,
) -> PairSession:
    """Check and prepare a pair and return the session that registers it.

    Parameters are those of :func:`napari_girnet.api.register_pair`; inputs (scans, truth,
    landmarks) are checked before any event.

    Raises
    ------
    ValueError
        Landmarks given for one side only, a bad ``skull_strip``.
    VolumeError, PreprocessError, LandmarkError, CheckpointError, ConfigError
        Bad inputs, with a message naming the input and the problem.
    """
    started = time.perf_counter()
    if skull_strip not in ("auto", "yes", "no"):
        raise ValueError(f"skull_strip must be 'auto', 'yes' or 'no', got {skull_strip!r}")
    landmarks = _landmarks(landmarks_moving, landmarks_fixed)
    cfg, loaded, steps = resolve_run(config, model, seed, device, inference, fine_tune_steps)
    n_io = cfg.schedule.instance_steps if instance_steps is None else int(instance_steps)
    inputs = prepare_pair(moving, fixed, cfg, seed=seed, skull_strip=skull_strip)
    truth_vol = as_volume(truth, name="truth") if truth is not None else None
    if truth_vol is not None:
        mismatch = describe_grid_mismatch(truth_vol, inputs.moving)
        if mismatch is not None:
            raise VolumeError(f"truth mask: {mismatch}")
    # no pseudo cases: they paste lesions into the atlas, which here is a pathological scan
    options = RegisterOptions(steps, n_io, 0, skull_strip=skull_strip)
    runtime = resolve_runtime(cfg.runtime)
    prepared = inputs.moving_prepared
    brain = torch.from_numpy(np.asarray(prepared.mask.array, dtype=bool))[None, None]
    state = WorkState(
        cfg=cfg,
        model=loaded,
        options=options,
        runtime=runtime,
        scan=inputs.moving,
        atlas=inputs.fixed_atlas,
        prepared=prepared,
        truth=truth_vol,
        raw=inputs.moving_raw,
        scan_range=intensity_range(prepared),
        scan_t=to_tensor(prepared.image)[None].to(runtime.device),
        atlas_t=to_tensor(inputs.fixed_atlas.image)[None].to(runtime.device),
        brain_t=brain.to(runtime.device),
    )
    session = RegistrationSession(state, time.perf_counter() - started, started)
    return PairSession(session, inputs, landmarks)


def _landmarks(
    moving_csv: str | os.PathLike[str] | None, fixed_csv: str | os.PathLike[str] | None
) -> tuple[Any, ...] | None:
    """``(ids, moving_mm, fixed_mm, (moving file, fixed file))`` or None; read up front."""
    if moving_csv is None and fixed_csv is None:
        return None
    if moving_csv is None or fixed_csv is None:
        given = moving_csv if moving_csv is not None else fixed_csv
        missing = "fixed" if moving_csv is not None else "moving"
        raise ValueError(
            f"{given}: landmarks given for one scan only; give the {missing} landmarks too"
        )
    ids, moving_mm, fixed_mm = read_landmark_pair(moving_csv, fixed_csv)
    return ids, moving_mm, fixed_mm, (str(moving_csv), str(fixed_csv))
