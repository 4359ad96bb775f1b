"""What a scan-to-scan ("pair") registration produces: fields and volumes on the fixed scan's grid.

Notation (all RAS mm): ``A_f`` maps MNI world -> fixed world (the fixed scan's own affine
alignment to MNI152, which only orients the working grid), ``A_m = D @ A_f`` maps MNI world ->
moving world, where ``D`` (fixed world -> moving world) is the direct affine alignment of the
moving scan to the fixed scan. The moving-side :class:`RegistrationResult` is expressed in the
"atlas" world of the working grid, i.e. MNI; the functions here compose its fields with ``A_f``
to express them in the fixed scan's own world.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from ..core.spatial import jacobian_determinant
from ..data.fields import sample_field, world_points
from ..data.landmarks import LandmarkError, pair_landmarks, read_landmarks
from ..data.nifti import write_displacement, write_nifti
from ..data.preprocess import AffineAlignment, PreparedScan
from ..data.volume import Volume
from ..evaluation import metrics
from ..evaluation.measure import landmark_tre
from .output import staged_directory
from .result import RegistrationResult, _jsonable, _mm_to_vox

__all__ = [
    "PairResult",
    "fixed_to_moving_field",
    "moving_to_fixed_field",
    "pair_tre",
    "read_landmark_pair",
    "warp_to_grid",
]


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """4x4 ``matrix`` applied to ``(3, ...)`` points."""
    m = np.asarray(matrix, dtype=np.float64)
    extra = (1,) * (points.ndim - 1)
    return np.einsum("ij,j...->i...", m[:3, :3], points) + m[:3, 3].reshape(3, *extra)


def fixed_to_moving_field(
    phi_st: np.ndarray,
    working: Volume,
    fixed: Volume,
    mni_to_fixed: np.ndarray,
    mni_to_moving: np.ndarray,
) -> np.ndarray:
    """The fixed->moving map on the fixed scan's native grid, as a displacement in mm.

    For fixed voxel ``v`` at fixed world ``p = N_f v``: working-grid voxel
    ``q = W^-1 A_f^-1 p``, moving-side working voxel ``q + phi_st(q)`` (linear interpolation;
    outside the working grid ``phi_st`` is extended by its nearest value, as in
    :func:`~napari_girnet.data.fields.atlas_to_scan_fields`, so the affine part stays exact
    there), moving world ``m = A_m W (q + phi_st(q))``; the result is ``m - p``.

    Parameters
    ----------
    phi_st : numpy.ndarray
        ``(3, *working.shape)`` GIRNet displacement in working-grid voxels, defined on the
        fixed ("atlas") side, pointing to the moving ("scan") side.
    working : Volume
        The working grid (MNI world).
    fixed : Volume
        The fixed scan's native grid (canonical RAS).
    mni_to_fixed, mni_to_moving : numpy.ndarray
        4x4 ``A_f`` (MNI world -> fixed world) and ``A_m`` (MNI world -> moving world).

    Returns
    -------
    numpy.ndarray
        ``(3, *fixed.shape)`` float32 RAS mm: fixed point ``p`` corresponds to moving point
        ``p + d(p)`` (ITK pull-back: resamples the moving scan onto the fixed grid).
    """
    p = world_points(fixed)
    q = _apply(np.linalg.inv(working.affine) @ np.linalg.inv(mni_to_fixed), p)
    q += sample_field(np.asarray(phi_st, np.float64), q)
    moved = _apply(np.asarray(mni_to_moving) @ working.affine, q)
    del q
    return (moved - p).astype(np.float32)


def moving_to_fixed_field(
    field_atlas_to_scan: np.ndarray, moving: Volume, mni_to_fixed: np.ndarray
) -> np.ndarray:
    """The moving->fixed map on the moving scan's native grid, as a displacement in mm.

    For moving world point ``x``: MNI point ``y = x + d_as(x)`` (``field_atlas_to_scan`` of
    the moving-side result), fixed point ``A_f y``; the result is ``A_f y - x``.

    Returns
    -------
    numpy.ndarray
        ``(3, *moving.shape)`` float32 RAS mm: moving point ``x`` corresponds to fixed point
        ``x + d(x)`` (ITK pull-back: resamples the fixed scan onto the moving grid).
    """
    x = world_points(moving)
    fixed_pts = _apply(mni_to_fixed, x + np.asarray(field_atlas_to_scan, np.float64))
    return (fixed_pts - x).astype(np.float32)


def warp_to_grid(
    volume: Volume, field_mm: np.ndarray, grid: Volume, order: int = 1, name: str | None = None
) -> Volume:
    """Resample ``volume`` onto ``grid`` through a displacement ``(3, *grid.shape)`` in RAS mm.

    Grid voxel at world ``p`` takes ``volume``'s value at world ``p + d(p)`` (spline ``order``
    0 or 1, 0 outside ``volume``). The result is float32 on ``grid`` (keeping its
    ``source_affine``), named ``name`` (default: ``volume``'s name).
    """
    target = world_points(grid) + np.asarray(field_mm, np.float64)
    vox = _apply(np.linalg.inv(volume.affine), target).reshape(3, -1)
    del target
    out = ndi.map_coordinates(
        np.asarray(volume.array, np.float32), vox, order=order, mode="constant", cval=0.0
    )
    return grid.with_array(out.reshape(grid.shape).astype(np.float32), name=name or volume.name)


def read_landmark_pair(
    moving_csv: str | os.PathLike[str], fixed_csv: str | os.PathLike[str]
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Read and pair the moving and fixed landmark CSVs: ``ids``, moving ``(N, 3)``, fixed
    ``(N, 3)`` RAS mm.

    Raises
    ------
    LandmarkError
        Bad files, or ids that differ (one line naming both files).
    """
    moving = read_landmarks(moving_csv)
    fixed = read_landmarks(fixed_csv)
    try:
        ids, moving_mm, fixed_mm = pair_landmarks(moving, fixed)
    except LandmarkError as err:
        raise LandmarkError(f"{moving_csv} (moving) vs {fixed_csv} (fixed): {err}") from err
    return ids, moving_mm, fixed_mm


def pair_tre(
    ids: Sequence[str],
    moving_mm: np.ndarray,
    fixed_mm: np.ndarray,
    field_fixed_to_moving: np.ndarray,
    fixed: Volume,
) -> dict[str, Any]:
    """TRE before (identity in world mm) and after (through ``field_fixed_to_moving``).

    Fixed landmark ``p`` maps to ``p + d(p)`` (``d`` linearly interpolated on the fixed grid,
    nearest outside it) and is compared with its moving landmark
    (:func:`~napari_girnet.evaluation.measure.landmark_tre`).

    Returns
    -------
    dict
        ``{"before": {...}, "after": {...}}``, each with ``mean``, ``sd``, ``median``,
        ``max`` (mm), ``n`` and ``per_landmark``.
    """
    fixed_pts = np.asarray(fixed_mm, np.float64).reshape(-1, 3)
    q = fixed.world_to_voxel(fixed_pts).T
    mapped = fixed_pts + sample_field(field_fixed_to_moving, q).T
    return {
        "before": landmark_tre(ids, moving_mm, fixed_pts),
        "after": landmark_tre(ids, moving_mm, mapped),
    }


def jacobian_on_fixed(phi_st: torch.Tensor, working: Volume, prepared: PreparedScan) -> Volume:
    """det J of the non-linear fixed->moving map (``phi_st``, working-grid voxels, fixed side),
    resampled onto the fixed native grid (1 outside the working grid)."""
    jac = jacobian_determinant(phi_st.float())[0, 0].numpy().astype(np.float32)
    native = prepared.to_native(working.with_array(jac, name="jacobian_on_fixed"), order=1)
    arr = np.where(native.array == 0, 1.0, native.array).astype(np.float32)
    return native.with_array(arr, name="jacobian_on_fixed")


@dataclass
class PairResult:
    """Everything :func:`napari_girnet.api.register_pair` produces.

    ``registration`` is the moving-side :class:`RegistrationResult` (moving native grid; its
    "atlas" is the fixed brain on the working grid, whose world is MNI152). Fixed-grid volumes
    (the fixed scan's native grid and affine): ``moved`` (the moving scan warped onto the
    fixed scan, moving intensity units), ``inpainted_on_fixed``, ``lesion_mask_on_fixed``
    (uint8 0/1), ``jacobian_on_fixed`` (det J of the non-linear fixed->moving map after the
    affine; > 1 where a fixed region corresponds to a larger moving region). Fields, RAS mm
    ``(3, X, Y, Z)``: ``field_fixed_to_moving`` on the fixed grid (fixed point ``p`` ->
    moving point ``p + d(p)``) and ``field_moving_to_fixed`` on the moving grid (moving point
    ``x`` -> fixed point ``x + d(x)``). ``direct_alignment.matrix`` maps fixed world ->
    moving world; ``fixed_prepared.alignment.matrix`` MNI world -> fixed world. ``tre``:
    ``{"before": ..., "after": ...}`` when landmarks were given.
    """

    registration: RegistrationResult
    fixed: Volume
    fixed_prepared: PreparedScan
    direct_alignment: AffineAlignment
    moved: Volume
    inpainted_on_fixed: Volume
    lesion_mask_on_fixed: Volume
    jacobian_on_fixed: Volume
    field_fixed_to_moving: np.ndarray
    field_moving_to_fixed: np.ndarray
    fixed_preprocessing: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    tre: dict[str, Any] | None = None
    landmark_files: tuple[str, str] | None = None

    @property
    def moving(self) -> Volume:
        """The moving scan (canonical RAS, native grid)."""
        return self.registration.scan

    def report(self) -> dict[str, Any]:
        """The moving-side report with ``"mode": "pair"``, the fixed scan, both alignments,
        timings, the fixed-grid lesion volume and ``tre`` (when landmarks were given)."""
        rep = self.registration.report()
        direct, fixed_align = self.direct_alignment, self.fixed_prepared.alignment
        rep.update(
            mode="pair",
            moving=self.moving.name,
            fixed=self.fixed.name,
            fixed_preprocessing=self.fixed_preprocessing,
            alignments={
                "moving_to_fixed": _alignment(direct, "fixed_world_to_moving_world_ras"),
                "fixed_to_mni": {
                    **_alignment(fixed_align, "mni_world_to_fixed_world_ras"),
                    "ok": self.fixed_prepared.alignment_ok,
                    "warnings": list(self.fixed_prepared.warnings),
                },
            },
            timings_s={k: round(v, 3) for k, v in self.timings.items()},
            lesion_volume_on_fixed_mm3=metrics.volume_mm3(
                self.lesion_mask_on_fixed.array > 0, self.fixed.spacing.tolist()
            ),
            tre=self.tre,
            landmarks=list(self.landmark_files) if self.landmark_files else None,
            conventions=PAIR_CONVENTIONS,
        )
        return rep

    def save(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write every output and ``report.json`` into ``out_dir`` (staged: a failure leaves
        no half-written folder, :func:`~napari_girnet.pipeline.output.staged_directory`)."""
        out = Path(out_dir)
        with staged_directory(out) as tmp:
            names = self.write_files(tmp)
        return {k: out / name for k, name in names.items()}

    def write_files(self, folder: Path) -> dict[str, str]:
        """Write the moving-side files, the fixed-grid files and ``report.json`` into an
        existing ``folder``; returns the file names."""
        names = self.registration.write_files(folder)
        for key, stem in _FIXED_VOLUMES:
            names[key] = write_nifti(getattr(self, key), folder / f"{stem}.nii.gz").name
        for key, grid in (
            ("field_fixed_to_moving", self.fixed),
            ("field_moving_to_fixed", self.moving),
        ):
            vox = _mm_to_vox(getattr(self, key), grid.affine)
            path = folder / f"{key}.nii.gz"
            names[key] = write_displacement(path, vox, grid, convention="itk").name
        report = self.report()
        report["files"] = dict(names)
        (folder / "report.json").write_text(json.dumps(_jsonable(report), indent=2, sort_keys=True))
        return names


_FIXED_VOLUMES = (
    ("moved", "moved_on_fixed"),
    ("inpainted_on_fixed", "inpainted_on_fixed"),
    ("lesion_mask_on_fixed", "lesion_mask_on_fixed"),
    ("jacobian_on_fixed", "jacobian_on_fixed"),
)


def _alignment(a: AffineAlignment, key: str) -> dict[str, Any]:
    return {
        key: np.asarray(a.matrix).tolist(),
        "metric": a.metric_value,
        "quality_brain_dice": a.quality,
        "init": a.init,
        "stages": list(a.stages),
        "ok": a.ok,
    }


PAIR_CONVENTIONS = {
    "mode": "pair: the moving (e.g. pre-operative) scan registered onto the fixed (follow-up) "
    "scan of the same patient; GIRNet's atlas is the fixed brain resampled onto the MNI152 "
    "working grid through the fixed scan's own affine alignment to MNI152",
    "volumes": "lesion_probability, lesion_mask, inpainted, atlas_to_scan (the fixed brain "
    "deformed onto the moving scan) and jacobian are on the moving scan's grid and affine; "
    "scan_to_atlas is on the working grid (MNI world); moved_on_fixed, inpainted_on_fixed, "
    "lesion_mask_on_fixed and jacobian_on_fixed are on the fixed scan's grid and affine",
    "fields": "ITK/ANTs displacement fields (5D NIfTI, intent VECTOR, LPS mm): "
    "field_fixed_to_moving.nii.gz lives on the fixed grid and maps fixed points to moving "
    "points (antsApplyTransforms -i moving -r fixed -t field_fixed_to_moving.nii.gz); "
    "field_moving_to_fixed.nii.gz lives on the moving grid and maps moving points to fixed "
    "points; field_atlas_to_scan / field_scan_to_atlas relate the moving scan to the MNI "
    "working grid",
    "lesion": "the lesion is segmented and inpainted in the moving scan only; a lesion (or "
    "resection cavity) in the fixed scan is not masked and still counts in the similarity",
    "jacobian": "jacobian: det J of the non-linear moving-to-fixed map on the moving grid; "
    "jacobian_on_fixed: det J of the non-linear fixed-to-moving map on the fixed grid (> 1 "
    "where a fixed region corresponds to a larger moving region); both after the affine "
    "alignment, <= 0 marks folding",
    "tre": "before: distance between paired landmarks in world mm (no transform); after: "
    "fixed landmark p mapped to p + d(p) by field_fixed_to_moving, compared with its moving "
    "landmark",
}
