"""Synthetic longitudinal pairs (pre/post) with an exact ground-truth deformation and landmarks.

A pair is made from one pre-operative (baseline) scan, its brain mask and its lesion mask by
:func:`make_pair`:

1. **Lesion change**, on the pre scan's grid (``change``):

   * ``"shrink"``: the lesion is eroded by ``r`` mm (distance transform of the lesion, voxels
     deeper than ``r``; ``r`` drawn in ``change_mm``, capped at half the lesion's largest depth
     so that a core survives). The freed voxels get healthy-looking intensities: a normalised
     convolution (Gaussian sigma ``max(r, 2 voxels)``, doubled until it reaches every freed voxel)
     of the surrounding normal brain, plus Gaussian-smoothed noise with the standard deviation of
     the normal tissue's fine texture.
   * ``"grow"``: the lesion is dilated by ``r`` mm (at least one voxel) inside the brain
     (distance transform of the non-lesion voxels <= ``r``); the new voxels get lesion-like
     intensities: a smooth random texture rank-mapped onto the 10-90 % quantiles of the pre
     lesion's intensities.
   * ``"resect"``: a cavity = the lesion dilated by a resection margin drawn in [1, 3] mm (at
     least one voxel), inside the brain, filled with a CSF-dark texture (the brain's 0.5-3 %
     intensity quantiles). ``lesion_fixed`` is the cavity (the abnormal tissue of the
     follow-up); no tumour is left.
   * ``"none"``: the lesion is unchanged.

2. **Deformation**: ``d`` = :func:`napari_girnet.data.synthetic.random_diffeomorphism` on the
   grid (random smooth stationary velocity, sigma 16 mm, scaling and squaring with 7 steps, peak
   displacement drawn in ``peak_mm``, det J > 0 everywhere). The follow-up is the changed pre scan
   warped by it, ``fixed(p) = changed_pre(p + d(p))`` (:func:`napari_girnet.core.spatial.warp`,
   trilinear; masks: linear then ``> 0.5``).

3. **Global intensity change** (``intensity_change=True``), on the follow-up inside its
   foreground: ``y = s * (x / s) ** gamma * bias + noise`` with ``s`` the 99.5 % brain intensity,
   ``gamma`` log-uniform in [0.8, 1.25], a smooth multiplicative bias ``exp(a * n)`` (``n``:
   Gaussian-smoothed noise, sigma 40 mm, scaled to peak 1; ``a`` in [0.05, 0.15]) and Gaussian
   noise of standard deviation ``s`` x [0.005, 0.02]; clipped at 0.

4. **Landmarks**: ``n_landmarks`` voxels of the follow-up (half within 30 mm of the lesion,
   half beyond), in the eroded brain (2 voxels) and outside the lesion of either time point,
   drawn at random among the most distinctive voxels (top 10 % of the smallest eigenvalue of the
   3D structure tensor, :func:`skimage.feature.structure_tensor`, sigma 1 voxel: a 3D corner
   measure as in Shi & Tomasi, CVPR 1994) with a minimum spacing of 10 mm (halved while too few
   are found). A fixed landmark at voxel ``p`` has the moving landmark ``p + d(p)``: the truth
   maps the fixed landmarks onto the moving landmarks exactly.

**Field convention** (as ``PairResult.field_fixed_to_moving`` of :mod:`napari_girnet.api`): the
follow-up is the *fixed* image and the pre scan the *moving* one; both share one grid. The truth
is defined on the fixed grid and maps **fixed -> moving**: fixed point ``p`` corresponds to moving
point ``p + d(p)``. :attr:`SyntheticPair.field_fixed_to_moving` holds it in RAS mm,
:attr:`SyntheticPair.field_fixed_to_moving_vox` in voxels along the array axes;
:func:`write_pair` stores it as an ITK displacement field (LPS mm), the file
``antsApplyTransforms -i moving -r fixed -t field`` uses to put the pre scan on the follow-up.

Everything is deterministic: each random choice comes from ``numpy.random.default_rng(seed)``;
the same inputs and seed give the same arrays and the same bytes on disk (CPU).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_girnet._version import __version__
from napari_girnet.core.spatial import jacobian_determinant, warp
from napari_girnet.data.landmarks import Landmarks, write_landmarks
from napari_girnet.data.nifti import voxel_to_mm_displacement, write_displacement, write_nifti
from napari_girnet.data.synthetic import SyntheticError, random_diffeomorphism
from napari_girnet.data.volume import Volume

__all__ = [
    "CHANGES",
    "FIELD_CONVENTION",
    "NEAR_MM",
    "PairError",
    "SyntheticPair",
    "make_pair",
    "write_pair",
]

logger = logging.getLogger(__name__)

#: Lesion changes between the pre scan and the follow-up.
CHANGES: tuple[str, ...] = ("shrink", "grow", "resect", "none")
#: Landmarks (and MDE regions) within this distance of the lesion count as "near", mm.
NEAR_MM = 30.0
#: Sentence stored in ``pair.json``.
FIELD_CONVENTION = (
    "field_fixed_to_moving.nii.gz: ITK displacement field (LPS mm) on the fixed (follow-up) grid; "
    "fixed point p corresponds to moving (pre) point p + d(p)"
)
_MIN_VOXELS = 8
_LANDMARK_SPACING_MM = 10.0
_TOP_FRACTION = 0.10
_FILES = {
    "moving": "moving.nii.gz",
    "fixed": "fixed.nii.gz",
    "lesion_moving": "lesion_moving.nii.gz",
    "lesion_fixed": "lesion_fixed.nii.gz",
    "brain_moving": "brain_moving.nii.gz",
    "brain_fixed": "brain_fixed.nii.gz",
    "field": "field_fixed_to_moving.nii.gz",
    "landmarks_moving": "landmarks_moving.csv",
    "landmarks_fixed": "landmarks_fixed.csv",
}


class PairError(SyntheticError):
    """Bad input to :func:`make_pair` (one line naming the input and the problem)."""


@dataclass(frozen=True, eq=False)
class SyntheticPair:
    """A synthetic pre/post pair and its exact ground truth, on one grid ``(X, Y, Z)``.

    Attributes
    ----------
    moving : Volume
        The pre scan (baseline), float32, as given.
    fixed : Volume
        The follow-up, float32: the changed pre scan warped by the truth, with the global
        intensity change.
    lesion_moving, lesion_fixed : Volume
        bool lesion masks of the pre scan and of the follow-up (for ``"resect"``: the cavity).
    brain_moving, brain_fixed : Volume
        bool brain masks (``brain_fixed`` = the pre brain warped by the truth).
    field_fixed_to_moving : numpy.ndarray
        ``(3, X, Y, Z)`` float32 displacement in **RAS mm** on the fixed grid: fixed point ``p``
        corresponds to moving point ``p + d(p)``.
    field_fixed_to_moving_vox : numpy.ndarray
        The same in **voxels** along the grid's array axes (:func:`napari_girnet.core.spatial.warp`
        convention: ``fixed(p) = changed_pre(p + d(p))``).
    landmarks_moving, landmarks_fixed : Landmarks
        ``N`` paired points (ids ``"1"`` .. ``"N"``), ``world`` ``(N, 3)`` RAS mm.
    landmark_near : numpy.ndarray
        ``(N,)`` bool: the landmark lies within :data:`NEAR_MM` of the lesion (fixed grid).
    meta : dict
        JSON-ready provenance: seed, change, drawn parameters, volumes, min det J, version.
    """

    moving: Volume
    fixed: Volume
    lesion_moving: Volume
    lesion_fixed: Volume
    brain_moving: Volume
    brain_fixed: Volume
    field_fixed_to_moving: np.ndarray
    field_fixed_to_moving_vox: np.ndarray
    landmarks_moving: Landmarks
    landmarks_fixed: Landmarks
    landmark_near: np.ndarray
    meta: dict[str, Any] = dc_field(default_factory=dict)


# --------------------------------------------------------------------------- helpers
def _warp(array: np.ndarray, disp: np.ndarray) -> np.ndarray:
    """``out(x) = array(x + disp(x))``, trilinear, zeros outside (numpy in and out)."""
    src = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    with torch.no_grad():
        out = warp(src, torch.from_numpy(np.ascontiguousarray(disp, dtype=np.float32))[None])
    return out[0, 0].numpy()


def _smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, sigma: float) -> np.ndarray:
    noise = ndi.gaussian_filter(rng.standard_normal(shape), sigma=sigma)
    return noise / max(float(noise.std()), 1e-12)


def _textured(
    region: np.ndarray,
    reference: np.ndarray,
    quantiles: tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Values for ``region``: smooth noise rank-mapped onto ``quantiles`` of ``reference``."""
    t = _smooth_noise(region.shape, rng, 1.0)[region]
    q = (np.argsort(np.argsort(t, kind="stable"), kind="stable") + 0.5) / max(t.size, 1)
    q = quantiles[0] + q * (quantiles[1] - quantiles[0])
    return np.quantile(reference, q).astype(np.float32)


def _healthy_fill(
    image: np.ndarray,
    normal: np.ndarray,
    region: np.ndarray,
    sigma_vox: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Healthy-looking values for ``region``: normalised convolution of ``normal``, + texture."""
    w = normal.astype(np.float64)
    num = image.astype(np.float64) * w
    fill = np.zeros(int(region.sum()), dtype=np.float64)
    todo = np.ones_like(fill, dtype=bool)
    sigma = float(sigma_vox)
    for _ in range(8):
        den = ndi.gaussian_filter(w, sigma)[region]
        val = ndi.gaussian_filter(num, sigma)[region]
        ok = todo & (den > 1e-3)
        fill[ok] = val[ok] / den[ok]
        todo &= ~ok
        if not todo.any():
            break
        sigma *= 2.0
    if todo.any():
        fill[todo] = float(np.median(image[normal]))
    residual = image - ndi.gaussian_filter(image.astype(np.float64), 1.0)
    sd = float(residual[normal].std())
    fill += sd * _smooth_noise(region.shape, rng, 0.7)[region]
    return np.maximum(fill, 0.0).astype(np.float32)


def _erode_mm(mask: np.ndarray, r_mm: float, spacing: np.ndarray) -> tuple[np.ndarray, float]:
    """Voxels of ``mask`` deeper than ``r`` (capped at half the largest depth); (mask, r used)."""
    depth = ndi.distance_transform_edt(mask, sampling=spacing)
    r = min(float(r_mm), 0.5 * float(depth.max()))
    out = depth > r
    if out.sum() == mask.sum():  # thin lesion: drop its outer layer
        out = depth > float(depth[mask].min())
    return out, r


def _dilate_mm(
    mask: np.ndarray, r_mm: float, spacing: np.ndarray, inside: np.ndarray
) -> tuple[np.ndarray, float]:
    """``mask`` grown by ``r`` mm (at least one voxel) inside ``inside``; (mask, r used)."""
    r = max(float(r_mm), float(spacing.min()))
    dist = ndi.distance_transform_edt(~mask, sampling=spacing)
    return mask | ((dist <= r) & inside), r


def _corner_score(image: np.ndarray) -> np.ndarray:
    """Smallest eigenvalue of the 3D structure tensor (sigma 1 voxel), ``(X, Y, Z)``."""
    from skimage.feature import structure_tensor, structure_tensor_eigenvalues

    scale = float(np.percentile(image, 99.5)) or 1.0
    tensor = structure_tensor(image.astype(np.float64) / scale, sigma=1.0, order="rc")
    return structure_tensor_eigenvalues(tensor)[-1]


def _pick(
    candidates: np.ndarray,
    k: int,
    taken: list[np.ndarray],
    spacing: np.ndarray,
    rng: np.random.Generator,
    what: str,
) -> list[np.ndarray]:
    """``k`` voxels of ``candidates`` (``(M, 3)``) in random order, >= 10 mm apart (relaxed)."""
    if k == 0:
        return []
    if len(candidates) < k:
        raise PairError(f"make_pair: only {len(candidates)} candidate landmark voxels {what}")
    order = rng.permutation(len(candidates))
    chosen: list[np.ndarray] = []
    gap = _LANDMARK_SPACING_MM
    while len(chosen) < k:
        for i in order:
            p = candidates[i]
            others = taken + chosen
            if others and np.min(np.sqrt((((np.asarray(others) - p) * spacing) ** 2).sum(1))) < gap:
                continue
            chosen.append(p)
            if len(chosen) == k:
                break
        gap /= 2.0
        if gap < 1e-3 and len(chosen) < k:  # pragma: no cover - candidates >= k guarantees success
            raise PairError(f"make_pair: cannot place {k} landmarks {what}")
    return chosen


def _check_inputs(
    scan: Volume, brain_mask: Volume, lesion: np.ndarray | None, change: str
) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(scan, Volume):
        raise PairError(f"make_pair: scan must be a Volume, got {type(scan).__name__}")
    name = scan.name or "scan"
    if min(scan.shape) < _MIN_VOXELS:
        raise PairError(
            f"make_pair: {name} {scan.shape} is not a 3D volume (need >= {_MIN_VOXELS} voxels "
            "along every axis)"
        )
    if not isinstance(brain_mask, Volume) or brain_mask.shape != scan.shape:
        raise PairError(
            f"make_pair: brain mask must be a Volume on the grid of {name} {scan.shape}"
        )
    if not scan.same_grid(brain_mask):
        raise PairError(f"make_pair: brain mask {brain_mask.name!r} is not on the grid of {name}")
    if change not in CHANGES:
        raise PairError(f"make_pair: unknown change {change!r}; use one of {', '.join(CHANGES)}")
    image = np.asarray(scan.array, dtype=np.float32)
    if not np.all(np.isfinite(image)):
        raise PairError(f"make_pair: {name} contains NaN or infinite voxels")
    brain = np.asarray(brain_mask.array) != 0
    if not brain.any():
        raise PairError(f"make_pair: brain mask of {name} is empty")
    if lesion is None:
        les = np.zeros(scan.shape, dtype=bool)
    else:
        les = np.asarray(lesion)
        if les.shape != scan.shape:
            raise PairError(
                f"make_pair: lesion mask shape {les.shape} is not the grid of {name} {scan.shape}"
            )
        les = (les != 0) & brain
    if change != "none" and not les.any():
        raise PairError(f"make_pair: change {change!r} needs a non-empty lesion inside the brain")
    return brain, les


def _range(value: float | Sequence[float], what: str) -> tuple[float, float]:
    try:
        if isinstance(value, int | float | np.number):
            lo = hi = float(value)
        else:
            lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise PairError(
            f"make_pair: {what} must be a number or a (low, high) pair: {value}"
        ) from None
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo <= hi):
        raise PairError(f"make_pair: {what} must be > 0 (a value or a (low, high) range): {value}")
    return lo, hi


# --------------------------------------------------------------------------- pair
def make_pair(
    scan: Volume,
    brain_mask: Volume,
    *,
    lesion: np.ndarray | None,
    change: str = "shrink",
    seed: int,
    peak_mm: float | Sequence[float] = (2.0, 6.0),
    n_landmarks: int = 10,
    intensity_change: bool = True,
    change_mm: Sequence[float] = (2.0, 4.0),
    smoothness_mm: float = 16.0,
) -> SyntheticPair:
    """Make a synthetic pre/post pair with an exact truth (method in the module docstring).

    Parameters
    ----------
    scan : Volume
        The pre scan, ``(X, Y, Z)``, any orientation (canonical RAS recommended), skull-stripped.
    brain_mask : Volume
        Its brain mask, same grid.
    lesion : numpy.ndarray or None
        ``(X, Y, Z)`` lesion mask (``!= 0``) on the scan grid; restricted to the brain. ``None``
        only with ``change="none"`` (all landmarks are then "far").
    change : {"shrink", "grow", "resect", "none"}
        The lesion change between the two time points.
    seed : int
        Seeds ``numpy.random.default_rng``; draws, in this order: the peak, the seed of the
        field, the change radius, the lesion textures, the intensity change, the landmarks.
    peak_mm : float or (float, float)
        Peak displacement of the truth in mm, or the range it is drawn from (default 2-6 mm).
    n_landmarks : int
        Number of landmark pairs (>= 2): ``n // 2`` near the lesion, the rest far.
    intensity_change : bool
        Apply the global gamma / bias / noise change to the follow-up.
    change_mm : (float, float)
        Range of the erosion / dilation radius, mm.
    smoothness_mm : float
        Gaussian sigma of the random velocity, mm.

    Returns
    -------
    SyntheticPair

    Raises
    ------
    PairError
        (a ``ValueError``) not a Volume, a 2D or degenerate grid, masks off the grid, an empty
        brain mask, an unknown change, a change without a lesion, bad ranges, too few landmark
        candidates.
    """
    brain, les = _check_inputs(scan, brain_mask, lesion, change)
    if isinstance(n_landmarks, bool) or int(n_landmarks) != n_landmarks or n_landmarks < 2:
        raise PairError(f"make_pair: n_landmarks must be an integer >= 2, got {n_landmarks}")
    peak_lo, peak_hi = _range(peak_mm, "peak_mm")
    ch_lo, ch_hi = _range(tuple(change_mm), "change_mm")
    rng = np.random.default_rng(int(seed))
    peak = float(rng.uniform(peak_lo, peak_hi))
    field_seed = int(rng.integers(2**31))
    radius = float(rng.uniform(ch_lo, ch_hi))
    margin = float(rng.uniform(1.0, 3.0))
    texture_seed = int(rng.integers(2**31))
    gamma = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    bias_amp = float(rng.uniform(0.05, 0.15))
    noise_frac = float(rng.uniform(0.005, 0.02))
    intensity_seed = int(rng.integers(2**31))
    landmark_seed = int(rng.integers(2**31))

    spacing = np.asarray(scan.spacing, dtype=np.float64)
    image = np.asarray(scan.array, dtype=np.float32)
    values = image[brain]
    trng = np.random.default_rng(texture_seed)
    changed = image.copy()
    new_les = les.copy()
    used_r = 0.0
    if change == "shrink":
        new_les, used_r = _erode_mm(les, radius, spacing)
        freed = les & ~new_les
        if freed.any():
            sigma = max(used_r / float(spacing.mean()), 2.0)
            changed[freed] = _healthy_fill(image, brain & ~les, freed, sigma, trng)
    elif change == "grow":
        new_les, used_r = _dilate_mm(les, radius, spacing, brain)
        added = new_les & ~les
        if added.any():
            changed[added] = _textured(added, image[les], (0.1, 0.9), trng)
    elif change == "resect":
        new_les, used_r = _dilate_mm(les, margin, spacing, brain)
        changed[new_les] = _textured(new_les, values, (0.005, 0.03), trng)

    try:
        disp = random_diffeomorphism(
            scan.shape, spacing, peak, field_seed, smoothness_mm=smoothness_mm
        )
    except SyntheticError as exc:
        raise PairError(f"make_pair: {exc}") from exc
    fixed = _warp(changed, disp)
    brain_f = _warp(brain, disp) > 0.5
    lesion_f = _warp(new_les, disp) > 0.5
    lesion_moving_on_f = _warp(les, disp) > 0.5

    if intensity_change:
        irng = np.random.default_rng(intensity_seed)
        s = float(np.percentile(fixed[brain_f], 99.5)) if brain_f.any() else 1.0
        s = s if s > 0 else 1.0
        fg = fixed > 0
        n = _smooth_noise(scan.shape, irng, 40.0 / float(spacing.mean()))
        n /= max(float(np.abs(n).max()), 1e-12)
        bias = np.exp(bias_amp * n)
        out = s * np.power(np.maximum(fixed, 0.0) / s, gamma) * bias
        out += noise_frac * s * irng.standard_normal(scan.shape)
        fixed = np.where(fg, np.maximum(out, 0.0), fixed).astype(np.float32)

    # landmarks on the follow-up
    any_lesion = lesion_f | lesion_moving_on_f
    inner = ndi.binary_erosion(brain_f, iterations=2) & ~ndi.binary_dilation(any_lesion)
    score = _corner_score(fixed)
    if any_lesion.any():
        dist = ndi.distance_transform_edt(~any_lesion, sampling=spacing)
        regions = [
            ("near the lesion", inner & (dist <= NEAR_MM)),
            ("far from the lesion", inner & (dist > NEAR_MM)),
        ]
        counts = [int(n_landmarks) // 2, int(n_landmarks) - int(n_landmarks) // 2]
    else:
        regions = [("in the brain", inner)]
        counts = [int(n_landmarks)]
    lrng = np.random.default_rng(landmark_seed)
    points: list[np.ndarray] = []
    near_flags: list[bool] = []
    for (what, region), k in zip(regions, counts, strict=True):
        vox = np.argwhere(region)
        if len(vox):
            s_vals = score[region]
            vox = vox[s_vals >= np.quantile(s_vals, 1.0 - _TOP_FRACTION)]
        chosen = _pick(vox, k, points, spacing, lrng, what)
        points += chosen
        near_flags += [what == "near the lesion"] * len(chosen)
    p_fix = np.asarray(points, dtype=np.float64)
    d_at = disp[:, p_fix[:, 0].astype(int), p_fix[:, 1].astype(int), p_fix[:, 2].astype(int)].T
    p_mov = p_fix + d_at.astype(np.float64)
    ids = tuple(str(i + 1) for i in range(len(points)))
    lm_fixed = Landmarks.from_voxel(ids, p_fix, scan)
    lm_moving = Landmarks.from_voxel(ids, p_mov, scan)

    det = jacobian_determinant(torch.from_numpy(disp)[None])
    disp_mm = voxel_to_mm_displacement(disp, scan.affine).astype(np.float32)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    meta: dict[str, Any] = {
        "seed": int(seed),
        "change": change,
        "change_radius_mm": used_r,
        "peak_mm_requested": peak,
        "peak_mm": float(np.sqrt((disp_mm**2).sum(0)).max()),
        "smoothness_mm": float(smoothness_mm),
        "min_jacobian_det": float(det.min()),
        "lesion_volume_moving_ml": float(les.sum()) * voxel_ml,
        "lesion_volume_changed_ml": float(new_les.sum()) * voxel_ml,
        "lesion_volume_fixed_ml": float(lesion_f.sum()) * voxel_ml,
        "intensity_change": bool(intensity_change),
        "gamma": gamma if intensity_change else 1.0,
        "bias_amplitude": bias_amp if intensity_change else 0.0,
        "noise_sd_fraction": noise_frac if intensity_change else 0.0,
        "n_landmarks": len(ids),
        "landmark_near": [bool(v) for v in near_flags],
        "near_mm": NEAR_MM,
        "grid_shape": list(scan.shape),
        "grid_affine": [[float(v) for v in row] for row in scan.affine],
        "field_convention": FIELD_CONVENTION,
        "napari_girnet_version": __version__,
    }
    base = scan.name or "scan"
    return SyntheticPair(
        moving=scan.with_array(image, name=f"{base} (pre)"),
        fixed=scan.with_array(fixed.astype(np.float32), name=f"{base} (synthetic follow-up)"),
        lesion_moving=scan.with_array(les, name=f"{base} lesion (pre)"),
        lesion_fixed=scan.with_array(lesion_f, name=f"{base} lesion (follow-up)"),
        brain_moving=scan.with_array(brain, name=f"{base} brain (pre)"),
        brain_fixed=scan.with_array(brain_f, name=f"{base} brain (follow-up)"),
        field_fixed_to_moving=disp_mm,
        field_fixed_to_moving_vox=disp,
        landmarks_moving=lm_moving,
        landmarks_fixed=lm_fixed,
        landmark_near=np.asarray(near_flags, dtype=bool),
        meta=meta,
    )


def write_pair(pair: SyntheticPair, directory: str | os.PathLike[str]) -> Path:
    """Write a pair to a folder (created; the files of a pair are replaced).

    Files (canonical voxel order of the pair's grid, ``restore_orientation=False``):
    ``moving.nii.gz`` / ``fixed.nii.gz`` (float32), ``lesion_moving`` / ``lesion_fixed`` /
    ``brain_moving`` / ``brain_fixed`` ``.nii.gz`` (uint8), ``field_fixed_to_moving.nii.gz``
    (ITK displacement, LPS mm, fixed grid, fixed -> moving;
    :func:`~napari_girnet.data.nifti.write_displacement`), ``landmarks_moving.csv`` /
    ``landmarks_fixed.csv`` (BraTS-Reg ``Landmark,X,Y,Z``, LPS mm;
    :func:`~napari_girnet.data.landmarks.write_landmarks`) and ``pair.json`` (the meta plus the
    file names; sorted keys, no timestamps: the same pair gives the same bytes).

    Returns
    -------
    pathlib.Path
        ``directory``.

    Raises
    ------
    NiftiError, LandmarkError
        A file cannot be written.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for key in ("moving", "fixed"):
        write_nifti(
            getattr(pair, key), out / _FILES[key], restore_orientation=False, dtype=np.float32
        )
    for key in ("lesion_moving", "lesion_fixed", "brain_moving", "brain_fixed"):
        vol = getattr(pair, key)
        vol = vol.with_array(np.asarray(vol.array).astype(np.uint8))
        write_nifti(vol, out / _FILES[key], restore_orientation=False)
    write_displacement(
        out / _FILES["field"],
        pair.field_fixed_to_moving_vox,
        pair.fixed,
        convention="itk",
        restore_orientation=False,
    )
    write_landmarks(pair.landmarks_moving, out / _FILES["landmarks_moving"], fmt="brats")
    write_landmarks(pair.landmarks_fixed, out / _FILES["landmarks_fixed"], fmt="brats")
    manifest = {**pair.meta, "files": dict(_FILES)}
    text = json.dumps(manifest, sort_keys=True, indent=2) + "\n"
    (out / "pair.json").write_text(text, encoding="utf-8")
    return out
