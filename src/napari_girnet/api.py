"""The Python API shared by the napari widgets, the ``girnet`` CLI and scripts.

Typical use::

    import napari_girnet as ng

    result = ng.register("scan.nii.gz")            # affine + GIRNet, bundled model, fine-tuned
    result.save("out/")                            # NIfTI outputs on the scan's own grid + report
    print(result.metrics)

    session = ng.fit(["a.nii.gz", "b.nii.gz"], config="cpu-2mm", checkpoint_dir="run/")
    for report in session:                         # one TrainingReport per co-learning step
        print(report.step, report.phase, report.loss)

Inputs (``ScanLike``) are :class:`~napari_girnet.data.volume.Volume` objects, NIfTI paths, or
``(array, affine)`` pairs (array indexed like the affine, e.g. napari layer data transposed back
to the file's axes). Everything here runs without Qt or napari.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from .core.config import GIRNetConfig
from .data.atlas import Atlas
from .data.volume import VolumeError, describe_grid_mismatch
from .detection import InferenceConfig, refine_on_grid
from .evaluation.measure import label_dice, landmark_tre, mask_metrics
from .pipeline import (
    FitSession,
    ModelLike,
    PairResult,
    PairSession,
    RegistrationCancelled,
    RegistrationResult,
    RegistrationSession,
    ScanLike,
    StageEvent,
    as_volume,
    bundled_model_path,
    fit,
    load_atlas_for,
    pair_steps,
    prepare,
    register_steps,
    resolve_config,
    staged_directory,
)
from .pipeline.training import pseudo_case_images

__all__ = [
    "FitSession",
    "InferenceConfig",
    "PairResult",
    "PairSession",
    "RegistrationCancelled",
    "RegistrationResult",
    "RegistrationSession",
    "StageEvent",
    "as_volume",
    "bundled_model_path",
    "evaluate",
    "fit",
    "load_atlas_for",
    "pair_steps",
    "prepare",
    "pseudo_case_images",
    "refine_on_grid",
    "register",
    "register_pair",
    "register_steps",
    "resolve_config",
    "staged_directory",
]


# ----------------------------------------------------------------------------- register
def register(
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
    progress: Callable[[StageEvent], None] | None = None,
) -> RegistrationResult:
    """Register a pathological scan to the atlas, find and inpaint its lesion.

    Drives the stages of :mod:`napari_girnet.pipeline` (prepare -> [fine-tune] -> detect ->
    [instance-optimise, detect again] -> predict -> [refine] -> map back) to the end;
    :func:`register_steps` is the same run as an iterable of stage events.

    Parameters
    ----------
    scan, atlas : path, Volume or (array, affine); atlas also "mni152" or an Atlas
        T1 scan (3D, real; raw or skull-stripped) and the skull-stripped template.
    model : GIRNet, Checkpoint or path, optional
        Default: the preset's bundled model; random weights from ``seed`` if none or "random".
    config : preset name or GIRNetConfig, optional
        Default: the model's own config (``"cpu-2mm"`` for the bundled/random model). When
        given together with a model made for another preset, the model is refused.
    fine_tune_steps, instance_steps : int, optional
        Co-learning steps on this scan (default: none for a trained model, GIRNet applies it
        as trained) and instance-optimisation steps (3D); else ``config.schedule``'s; 0 = none.
    pseudo_cases, exclude_lesions : optional
        Pseudo cases mixed into fine-tuning (default 8), lesion sources left out of them.
    seed : int
        Seed of the random weights (when no model ships), the alignment and the fine-tuning;
        the same seed on CPU gives the same bytes (global generators are never reseeded).
    device : str, optional
        Overrides ``config.runtime.device``; ``checkpoint_dir`` receives fine-tuning's ``last.pt``.
    truth : path/Volume, optional
        Lesion mask on the scan's grid: Dice, HD95, volumes in ``metrics``.
    inference : InferenceConfig or dict, optional
        The one way to change how the mask is made
        (:class:`~napari_girnet.detection.InferenceConfig`): e.g. ``{"detector": "segnet"}``,
        ``{"refine": False}``, ``{"outlier_polarity": "hyper"}`` for contrast-enhanced T1 or
        FLAIR, ``{"outlier_min_volume_mm3": 1000}``.
    skull_strip : {"auto", "yes", "no"}
        Brain extraction + N4 first (:func:`napari_girnet.data.skullstrip.preprocess_raw`);
        ``"auto"``: only for a scan with skull (decision in ``provenance["preprocessing"]``).
    progress : callable, optional
        Called with every :class:`~napari_girnet.pipeline.StageEvent`.

    Raises
    ------
    VolumeError, PreprocessError, CheckpointError, ConfigError
        For bad inputs, with a message naming the input and the problem (``CheckpointError``
        also for a ``model`` that is not a model, checkpoint or path, or that was made with
        another preset than ``config``).
    """
    session = register_steps(
        scan,
        atlas,
        model,
        config=config,
        fine_tune_steps=fine_tune_steps,
        instance_steps=instance_steps,
        pseudo_cases=pseudo_cases,
        exclude_lesions=exclude_lesions,
        seed=seed,
        device=device,
        truth=truth,
        checkpoint_dir=checkpoint_dir,
        inference=inference,
        skull_strip=skull_strip,
    )
    return session.run(progress)


# ----------------------------------------------------------------------------- register_pair
def register_pair(
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
    landmarks_moving: str | os.PathLike | None = None,
    landmarks_fixed: str | os.PathLike | None = None,
    progress: Callable[[StageEvent], None] | None = None,
) -> PairResult:
    """Register a patient's scan (moving, e.g. pre-operative) onto another of its scans (fixed,
    e.g. the follow-up), both possibly pathological.

    Both scans are brain-masked and normalised (``skull_strip`` as in :func:`register`). The
    fixed scan is put on the preset's MNI152 working grid by its own affine alignment to
    MNI152 (this only orients the grid) and its brain there is GIRNet's atlas; the moving scan
    is aligned directly to the fixed scan (search, rigid, similarity, affine) and the stages of
    :func:`register` run on the pair (:func:`napari_girnet.pipeline.pair_steps`). The lesion is
    segmented and inpainted in the MOVING scan only: a lesion (or resection cavity) also
    present in the fixed scan is not masked, and the LNCC similarity is still computed there.

    Parameters
    ----------
    moving, fixed : path, Volume or (array, affine)
        3D T1 scans of the same patient (raw or skull-stripped).
    model, config, fine_tune_steps, instance_steps, seed, device, inference, skull_strip
        As in :func:`register` (no pseudo cases are mixed into fine-tuning: the atlas here is
        a pathological scan).
    truth : path/Volume, optional
        Lesion mask on the moving scan's grid: Dice, HD95 in ``result.registration.metrics``.
    landmarks_moving, landmarks_fixed : path, optional
        Landmark CSVs (BraTS-Reg ``Landmark,X,Y,Z`` LPS or ``id,x,y,z`` RAS), paired by id:
        ``result.tre`` = ``{"before": ..., "after": ...}`` (mm), before = identity, after =
        fixed landmark ``p`` mapped to ``p + d(p)`` by ``field_fixed_to_moving``.
    progress : callable, optional
        Called with every :class:`~napari_girnet.pipeline.StageEvent`.

    Returns
    -------
    PairResult
        ``registration`` (the moving-side :class:`RegistrationResult`, moving grid),
        ``moved`` / ``inpainted_on_fixed`` / ``lesion_mask_on_fixed`` / ``jacobian_on_fixed``
        on the fixed scan's native grid, ``field_fixed_to_moving`` ``(3, X, Y, Z)`` RAS mm on
        the fixed grid (fixed point ``p`` -> moving point ``p + d(p)``) and
        ``field_moving_to_fixed`` on the moving grid (moving ``x`` -> fixed ``x + d(x)``).

    Raises
    ------
    ValueError
        Landmarks for one scan only.
    VolumeError, PreprocessError, LandmarkError, CheckpointError, ConfigError
        A 2D or empty scan, a bad grid or affine, a truth mask off the moving grid, landmark
        ids that differ (naming both files); each message names the input.
    """
    session = pair_steps(
        moving,
        fixed,
        model,
        config=config,
        fine_tune_steps=fine_tune_steps,
        instance_steps=instance_steps,
        seed=seed,
        device=device,
        truth=truth,
        inference=inference,
        skull_strip=skull_strip,
        landmarks_moving=landmarks_moving,
        landmarks_fixed=landmarks_fixed,
    )
    return session.run(progress)


# ----------------------------------------------------------------------------- evaluate
def evaluate(
    *,
    pred: ScanLike | None = None,
    truth: ScanLike | None = None,
    landmarks_moving: str | os.PathLike | None = None,
    landmarks_fixed: str | os.PathLike | None = None,
    field: str | os.PathLike | None = None,
    labels: bool = False,
) -> dict[str, Any]:
    """Dice / HD95 of a predicted mask and/or TRE of landmark pairs.

    Parameters
    ----------
    pred, truth : path, Volume or (array, affine)
        Masks (nonzero = foreground) on the same grid. With ``labels=True`` they are label maps
        and a per-label Dice is added (``dice_per_label``, mean over labels present in truth).
    landmarks_moving, landmarks_fixed : path
        Landmark CSVs (BraTS-Reg ``Landmark,X,Y,Z`` LPS or ``id,x,y,z`` RAS), paired by id.
    field : path, optional
        Displacement field NIfTI (ITK or girnet voxel convention) defined on the fixed grid and
        mapping fixed points to moving points (e.g. ``field_atlas_to_scan.nii.gz`` with the
        scan as fixed and the atlas as moving). Without it TRE is the initial distance.

    Returns
    -------
    dict
        ``dice``, ``hd95_mm`` (masks) and ``tre_mm`` (``mean``, ``sd``, ``median``, ``max``,
        ``n``, ``per_landmark``) as applicable.
    """
    from .data.landmarks import pair_landmarks, read_landmarks

    out: dict[str, Any] = {}
    if (pred is None) != (truth is None):
        raise ValueError("give both pred and truth masks, or neither")
    if pred is not None and truth is not None:
        p = as_volume(pred, name="pred")
        t = as_volume(truth, name="truth")
        mismatch = describe_grid_mismatch(t, p)
        if mismatch is not None:
            raise VolumeError(f"{mismatch}; resample one onto the other first")
        out.update(mask_metrics(p.array, t.array, p.spacing, (p.name, t.name)))
        if labels:
            out.update(label_dice(p.array, t.array))
    if (landmarks_moving is None) != (landmarks_fixed is None):
        raise ValueError("give both moving and fixed landmarks for TRE")
    if landmarks_moving is not None and landmarks_fixed is not None:
        ids, moving_mm, fixed_mm = pair_landmarks(
            read_landmarks(landmarks_moving), read_landmarks(landmarks_fixed)
        )
        out["tre_mm"] = landmark_tre(ids, moving_mm, fixed_mm, field)
    if not out:
        raise ValueError("nothing to evaluate: give masks and/or landmarks")
    return out
