"""Evaluation metrics for segmentation and registration (numpy / scipy only).

Every array is a numpy array in the volume's array axis order (3D: ``(X, Y, Z)``; 2D arrays
``(H, W)`` are accepted wherever the metric makes sense). Spacings are length-``ndim`` sequences of
voxel sizes in millimetres along the array axes.

Segmentation
    :func:`dice`, :func:`dice_flip_invariant` (GIRNet code's diagnostic), :func:`hd95`,
    :func:`assd`, :func:`volume_mm3`.
Registration
    :func:`tre`, :func:`tre_summary`, :func:`sample_displacement` (landmark errors),
    :func:`mean_deformation_error` (GIRNet's MDE, Han et al., ISBI 2017),
    :func:`folding_fraction`, :func:`log_jacobian_std` (deformation quality).

Definitions follow the evaluation of Liu & Gu, MICCAI 2023 (Dice, HD95, MDE) and its upstream code.
Bad input raises :class:`ValueError` with a message naming the argument.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage

__all__ = [
    "assd",
    "dice",
    "dice_flip_invariant",
    "folding_fraction",
    "hd95",
    "log_jacobian_std",
    "mean_deformation_error",
    "sample_displacement",
    "tre",
    "tre_summary",
    "volume_mm3",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _as_array(x: object, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise ValueError(f"{name}: cannot be converted to a numpy array ({exc})") from exc
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise ValueError(f"{name}: expected a numeric or boolean array, got dtype {arr.dtype}")
    return arr


def _check_finite(arr: np.ndarray, name: str) -> None:
    if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or infinite values")


def _as_mask(x: object, name: str, ndims: tuple[int, ...] | None = (2, 3)) -> np.ndarray:
    """Boolean-ise an array (nonzero = foreground) after checking dtype, ndim and NaN."""
    arr = _as_array(x, name)
    if ndims is not None and arr.ndim not in ndims:
        raise ValueError(
            f"{name}: expected a {' or '.join(f'{d}D' for d in ndims)} array, "
            f"got {arr.ndim}D with shape {arr.shape}"
        )
    if arr.ndim == 0:
        raise ValueError(f"{name}: expected an array, got a scalar")
    if np.issubdtype(arr.dtype, np.inexact) and np.any(np.isnan(arr)):
        raise ValueError(f"{name}: contains NaN values")
    return arr != 0


def _check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {a.shape} and {b.shape}"
        )


def _check_spacing(
    spacing: Sequence[float] | np.ndarray | None, ndim: int, name: str = "spacing"
) -> np.ndarray:
    """Return the spacing as a float64 vector of length ``ndim`` (None -> 1 mm isotropic)."""
    if spacing is None:
        return np.ones(ndim, dtype=np.float64)
    try:
        sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a sequence of {ndim} numbers, got {spacing!r}") from exc
    if sp.size != ndim:
        raise ValueError(f"{name}: expected {ndim} values (one per array axis), got {sp.size}")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"{name}: voxel sizes must be finite and > 0, got {sp.tolist()}")
    return sp


def _optional_mask(mask: object | None, shape: tuple[int, ...], name: str) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = _as_mask(mask, name, ndims=None)
    if m.shape != shape:
        raise ValueError(f"{name}: shape {m.shape} does not match jac_det shape {shape}")
    return m


# --------------------------------------------------------------------------------------------
# segmentation overlap
# --------------------------------------------------------------------------------------------


def _dice_bool(a: np.ndarray, b: np.ndarray) -> float:
    denom = int(a.sum()) + int(b.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / denom


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice similarity coefficient ``2|A ∩ B| / (|A| + |B|)``.

    Parameters
    ----------
    pred, truth : numpy.ndarray
        Masks of the same shape, any ``ndim >= 1`` (typically ``(X, Y, Z)`` or ``(H, W)``).
        Boolean-ised as ``array != 0`` (nonzero = foreground). Threshold probabilities first
        (GIRNet: ``theta(S) > 0.5``).

    Returns
    -------
    float
        Dice in [0, 1]. **Both masks empty -> 1.0** (perfect agreement on "no lesion"); exactly one
        empty -> 0.0.

    Raises
    ------
    ValueError
        Shapes differ, a scalar or non-numeric array is given, or an input contains NaN.

    Notes
    -----
    Standard (non flip-invariant) Dice, as in the paper's Table 1: foreground = predicted
    lesion against the whole-tumour ground truth. Dice (1945), Ecology 26(3).
    """
    a = _as_mask(pred, "pred", ndims=None)
    b = _as_mask(truth, "truth", ndims=None)
    _check_same_shape(a, b, "pred", "truth")
    return _dice_bool(a, b)


def dice_flip_invariant(pred: np.ndarray, truth: np.ndarray) -> float:
    """Label-flip-invariant Dice ``max(Dice(M, G), Dice(1 - M, G))`` -- a **diagnostic only**.

    This is what the official GIRNet code reports and uses for checkpoint selection (IEM/ReDO
    convention for label-free segmentation). It can hide an inverted mask, so report the standard
    :func:`dice` as the result and this value only as a diagnostic (upstream ``dice`` helper).

    Parameters
    ----------
    pred, truth : numpy.ndarray
        Masks of the same shape (any ``ndim >= 1``), boolean-ised as ``array != 0``.
        ``1 - M`` is the logical complement of the boolean-ised ``pred``.

    Returns
    -------
    float
        In [0, 1]. Empty inputs follow :func:`dice` (both empty -> 1.0; an empty ``pred`` against a
        non-empty ``truth`` scores ``Dice(1 - M, G)`` which is > 0).

    Raises
    ------
    ValueError
        As :func:`dice`.
    """
    a = _as_mask(pred, "pred", ndims=None)
    b = _as_mask(truth, "truth", ndims=None)
    _check_same_shape(a, b, "pred", "truth")
    return max(_dice_bool(a, b), _dice_bool(~a, b))


# --------------------------------------------------------------------------------------------
# surface distances
# --------------------------------------------------------------------------------------------


def _surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with at least one background face neighbour (6 in 3D, 4 in 2D).

    Voxels outside the array count as background, so a non-empty mask always has a non-empty
    surface (mask voxels on the array border are surface voxels).
    """
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    eroded = ndimage.binary_erosion(mask, structure=structure, border_value=0)
    return mask & ~eroded


def _directed_surface_distances(
    pred: np.ndarray, truth: np.ndarray, spacing: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from pred's surface voxels to truth's surface and vice versa."""
    s_pred = _surface(pred)
    s_truth = _surface(truth)
    dt_truth = ndimage.distance_transform_edt(~s_truth, sampling=spacing)
    dt_pred = ndimage.distance_transform_edt(~s_pred, sampling=spacing)
    return dt_truth[s_pred], dt_pred[s_truth]


def _prepare_surface_inputs(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = _as_mask(pred, "pred")
    b = _as_mask(truth, "truth")
    _check_same_shape(a, b, "pred", "truth")
    sp = _check_spacing(spacing, a.ndim)
    return a, b, sp


def hd95(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    convention: Literal["max", "pooled"] = "max",
) -> float:
    """95th-percentile symmetric Hausdorff distance between two mask surfaces, in mm.

    Parameters
    ----------
    pred, truth : numpy.ndarray
        Masks of the same shape, 2D ``(H, W)`` or 3D ``(X, Y, Z)``, boolean-ised as ``!= 0``.
    spacing : sequence of float, optional
        Voxel size in mm along each array axis (length ``ndim``). ``None`` (default) = 1 mm
        isotropic, i.e. ``(1, 1, 1)`` in 3D.
    convention : {"max", "pooled"}
        ``"max"`` (default, MONAI ``compute_hausdorff_distance(percentile=95)``):
        ``max(P95(d(pred -> truth)), P95(d(truth -> pred)))``. ``"pooled"`` (medpy
        ``metric.binary.hd95``): ``P95`` of the two directed distance sets concatenated.

    Returns
    -------
    float
        Distance in mm. One mask empty and the other not -> ``inf``; both empty -> ``0.0``.

    Raises
    ------
    ValueError
        Shapes differ, ``ndim`` not 2 or 3, NaN in a mask, bad ``spacing`` or ``convention``.

    Notes
    -----
    Surface = foreground voxels with a background face neighbour (6-neighbourhood in 3D,
    4-neighbourhood in 2D); voxels outside the array count as background (MONAI convention), so
    mask voxels on the array border are surface voxels. The directed distance of a surface voxel of
    one mask is the Euclidean distance (voxel centre to voxel centre, mm) to the nearest surface
    voxel of the other, from :func:`scipy.ndimage.distance_transform_edt` with
    ``sampling=spacing``. Percentiles use numpy's linear interpolation. Not reported by GIRNet;
    Huttenlocher et al. (1993), IEEE TPAMI 15(9).
    """
    if convention not in ("max", "pooled"):
        raise ValueError(f"convention: expected 'max' or 'pooled', got {convention!r}")
    a, b, sp = _prepare_surface_inputs(pred, truth, spacing)
    na, nb = bool(a.any()), bool(b.any())
    if not na and not nb:
        return 0.0
    if na != nb:
        return float("inf")
    d_ab, d_ba = _directed_surface_distances(a, b, sp)
    if convention == "max":
        return float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))
    return float(np.percentile(np.concatenate([d_ab, d_ba]), 95))


def assd(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Average symmetric surface distance between two masks, in mm.

    Parameters
    ----------
    pred, truth : numpy.ndarray
        Masks of the same shape, 2D ``(H, W)`` or 3D ``(X, Y, Z)``, boolean-ised as ``!= 0``.
    spacing : sequence of float, optional
        Voxel size in mm along each array axis; ``None`` = 1 mm isotropic.

    Returns
    -------
    float
        ``(Σ d(pred -> truth) + Σ d(truth -> pred)) / (|∂pred| + |∂truth|)`` in mm: the mean of the
        two directed surface-distance sets pooled (Heimann et al. 2009, IEEE TMI 28(8); MONAI
        ``compute_average_surface_distance(symmetric=True)``). medpy's ``assd`` instead averages
        the two directed means; the two agree when both surfaces have the same number of voxels.
        One mask empty and the other not -> ``inf``; both empty -> ``0.0``.

    Raises
    ------
    ValueError
        As :func:`hd95`.

    Notes
    -----
    Surfaces and distances are defined as in :func:`hd95`.
    """
    a, b, sp = _prepare_surface_inputs(pred, truth, spacing)
    na, nb = bool(a.any()), bool(b.any())
    if not na and not nb:
        return 0.0
    if na != nb:
        return float("inf")
    d_ab, d_ba = _directed_surface_distances(a, b, sp)
    return float((d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size))


def volume_mm3(mask: np.ndarray, spacing: Sequence[float] | np.ndarray) -> float:
    """Volume of a mask in mm³ (mm² for a 2D mask).

    Parameters
    ----------
    mask : numpy.ndarray
        2D or 3D mask, boolean-ised as ``!= 0``.
    spacing : sequence of float
        Voxel size in mm along each array axis (length ``ndim``).

    Returns
    -------
    float
        ``count_nonzero(mask) * prod(spacing)``; an empty mask gives 0.0.

    Raises
    ------
    ValueError
        ``ndim`` not 2 or 3, NaN in the mask, or bad ``spacing``.
    """
    m = _as_mask(mask, "mask")
    sp = _check_spacing(spacing, m.ndim)
    return float(np.count_nonzero(m) * float(np.prod(sp)))


# --------------------------------------------------------------------------------------------
# landmarks
# --------------------------------------------------------------------------------------------


def _check_points(points: object, name: str, ndim: int | None = None) -> np.ndarray:
    p = _as_array(points, name).astype(np.float64)
    if p.ndim != 2 or p.shape[1] not in (2, 3):
        raise ValueError(f"{name}: expected shape (N, 3) or (N, 2), got {p.shape}")
    if ndim is not None and p.shape[1] != ndim:
        raise ValueError(f"{name}: expected {ndim} coordinates per point, got {p.shape[1]}")
    _check_finite(p, name)
    return p


def tre(points_mapped_mm: np.ndarray, points_target_mm: np.ndarray) -> np.ndarray:
    """Per-landmark target registration error (Euclidean distance) in mm.

    Parameters
    ----------
    points_mapped_mm : numpy.ndarray
        ``(N, 3)`` (or ``(N, 2)``) landmark positions after mapping, in mm. For the standard TRE
        (the standard definition) with a displacement ``u`` on the fixed grid (backward warp
        moving -> fixed): ``(q + u(q)) * spacing`` for fixed landmark voxel ``q`` (see
        :func:`sample_displacement`), or equivalently world coordinates.
    points_target_mm : numpy.ndarray
        ``(N, 3)`` corresponding target landmarks (the moving landmarks in that example), in the
        same mm frame and in the same order.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` float64 distances in mm. ``N = 0`` gives an empty ``(0,)`` array.

    Raises
    ------
    ValueError
        Shapes differ or are not ``(N, 2|3)``, or a coordinate is NaN/inf.

    Notes
    -----
    TRE: Fitzpatrick, West & Maurer (1998), IEEE TMI 17(5); GIRNet evaluates it on BraTS-Reg 2022.
    """
    a = _check_points(points_mapped_mm, "points_mapped_mm")
    b = _check_points(points_target_mm, "points_target_mm")
    if a.shape != b.shape:
        raise ValueError(
            f"points_mapped_mm and points_target_mm must have the same shape, "
            f"got {a.shape} and {b.shape}"
        )
    return np.sqrt(np.sum((a - b) ** 2, axis=1))


def tre_summary(distances: np.ndarray) -> dict[str, float | int]:
    """Summary statistics of per-landmark TRE values.

    Parameters
    ----------
    distances : numpy.ndarray
        ``(N,)`` distances in mm (e.g. the output of :func:`tre`).

    Returns
    -------
    dict
        ``{"mean", "sd", "median", "max"}`` in mm (floats; ``sd`` is the population standard
        deviation, ``ddof=0``) and ``"n"`` (int). ``N = 0`` gives NaN statistics and ``n = 0``.

    Raises
    ------
    ValueError
        ``distances`` is not 1D, contains NaN/inf or negative values.
    """
    d = _as_array(distances, "distances").astype(np.float64)
    if d.ndim != 1:
        raise ValueError(f"distances: expected a 1D array of shape (N,), got shape {d.shape}")
    _check_finite(d, "distances")
    if np.any(d < 0):
        raise ValueError("distances: contains negative values (distances must be >= 0)")
    if d.size == 0:
        nan = float("nan")
        return {"mean": nan, "sd": nan, "median": nan, "max": nan, "n": 0}
    return {
        "mean": float(d.mean()),
        "sd": float(d.std()),
        "median": float(np.median(d)),
        "max": float(d.max()),
        "n": int(d.size),
    }


def _check_disp(disp: object, name: str) -> np.ndarray:
    u = _as_array(disp, name)
    if u.ndim not in (3, 4) or u.shape[0] != u.ndim - 1:
        raise ValueError(
            f"{name}: expected a displacement field of shape (ndim, *spatial) with ndim 2 or 3 "
            f"(e.g. (3, X, Y, Z)), got shape {u.shape}"
        )
    if u.size == 0:
        raise ValueError(f"{name}: displacement field is empty (shape {u.shape})")
    _check_finite(u, name)
    return u


def sample_displacement(disp: np.ndarray, points_vox: np.ndarray, order: int = 1) -> np.ndarray:
    """Sample a voxel displacement field at fractional voxel positions.

    Parameters
    ----------
    disp : numpy.ndarray
        ``(ndim, *spatial)`` displacement in voxels of its own grid, one channel per array axis
        in the same order (``(3, X, Y, Z)`` or ``(2, H, W)``), as in ``docs/conventions.md``.
    points_vox : numpy.ndarray
        ``(N, ndim)`` fractional voxel coordinates on the grid of ``disp`` (array index order).
    order : int
        Spline order for :func:`scipy.ndimage.map_coordinates`, 0-5; default 1 (linear).
        GIRNet's code used the scipy default 3.

    Returns
    -------
    numpy.ndarray
        ``(N, ndim)`` float64 displacements in voxels. Points outside the grid take the value of
        the nearest edge voxel (``mode="nearest"``). ``N = 0`` gives a ``(0, ndim)`` array.

    Raises
    ------
    ValueError
        Bad field shape, point shape not ``(N, ndim)``, NaN/inf values, or ``order`` not in 0-5.

    Notes
    -----
    Standard TRE: for a field ``u`` on the fixed grid mapping fixed voxels into
    the moving image and fixed landmark voxel ``q``, the mapped point is ``q + u(q)``; compare it
    with the moving landmark (both converted to mm) using :func:`tre`.
    """
    u = _check_disp(disp, "disp")
    ndim = u.shape[0]
    p = _as_array(points_vox, "points_vox").astype(np.float64)
    if p.ndim != 2 or p.shape[1] != ndim:
        raise ValueError(f"points_vox: expected shape (N, {ndim}), got {p.shape}")
    _check_finite(p, "points_vox")
    if isinstance(order, bool) or not isinstance(order, int | np.integer) or not 0 <= order <= 5:
        raise ValueError(f"order: expected an integer spline order in 0..5, got {order!r}")
    if p.shape[0] == 0:
        return np.zeros((0, ndim), dtype=np.float64)
    coords = p.T
    out = np.empty((p.shape[0], ndim), dtype=np.float64)
    for k in range(ndim):
        out[:, k] = ndimage.map_coordinates(
            u[k].astype(np.float64, copy=False), coords, order=int(order), mode="nearest"
        )
    return out


# --------------------------------------------------------------------------------------------
# deformation error and quality
# --------------------------------------------------------------------------------------------


def _region_stats(values: np.ndarray, region: np.ndarray) -> dict[str, float | int]:
    v = values[region]
    if v.size == 0:
        return {"mean": float("nan"), "sd": float("nan"), "n_voxels": 0}
    return {"mean": float(v.mean()), "sd": float(v.std()), "n_voxels": int(v.size)}


def mean_deformation_error(
    disp_pred: np.ndarray,
    disp_true: np.ndarray,
    lesion: np.ndarray,
    brain: np.ndarray,
    spacing: Sequence[float] | None = None,
    near_mm: float = 30.0,
) -> dict[str, dict[str, float | int]]:
    """GIRNet's mean deformation error (MDE) per region, in mm.

    Parameters
    ----------
    disp_pred : numpy.ndarray
        ``(ndim, *spatial)`` predicted displacement in voxels (e.g. the field for the pseudo-lesion
        scan).
    disp_true : numpy.ndarray
        ``(ndim, *spatial)`` gold-standard displacement in voxels on the **same grid** (e.g. the
        field obtained by registering the lesion-free original; Liu & Gu, MICCAI 2023).
    lesion : numpy.ndarray
        ``spatial``-shaped ground-truth lesion mask (``!= 0``) on that grid. Must be non-empty.
    brain : numpy.ndarray
        ``spatial``-shaped brain mask (``!= 0``; e.g. nonzero voxels of the skull-stripped image).
        Must be non-empty.
    spacing : sequence of float, optional
        Voxel size in mm along each array axis; ``None`` = 1 mm isotropic.
    near_mm : float
        Distance threshold (mm) between the "near" and "far" regions; default 30.

    Returns
    -------
    dict
        ``{"in", "near", "far", "brain"}`` -> ``{"mean": float, "sd": float, "n_voxels": int}``
        with mean and population sd (``ddof=0``) of the per-voxel error in mm. A region without
        voxels has NaN mean and sd and ``n_voxels = 0``.

        * ``in``: ``lesion``;
        * ``near``: ``brain & ~lesion & d <= near_mm``;
        * ``far``: ``brain & ~lesion & d > near_mm``;
        * ``brain``: ``brain``;

        where ``d`` is the Euclidean distance (mm, voxel centres) to the nearest lesion voxel from
        :func:`scipy.ndimage.distance_transform_edt` on ``~lesion`` with ``sampling=spacing``.
        When the lesion lies inside the brain, in/near/far partition the brain.

    Raises
    ------
    ValueError
        Field shapes differ or are not ``(ndim, *spatial)``, mask shapes differ from ``spatial``,
        NaN/inf values, bad ``spacing`` or ``near_mm``, **the lesion mask is empty**, or the brain
        mask is empty.

    Notes
    -----
    Per-voxel error ``e(x) = sqrt(Σ_k (spacing_k (d_pred_k(x) - d_true_k(x)))²)``, which equals
    ``‖φ(x) - φ_gs(x)‖₂`` in mm for ``φ = id + d``. MDE as in Han et al., ISBI 2017, used by
    GIRNet (Liu & Gu, MICCAI 2023, evaluation).
    """
    u_pred = _check_disp(disp_pred, "disp_pred")
    u_true = _check_disp(disp_true, "disp_true")
    if u_pred.shape != u_true.shape:
        raise ValueError(
            f"disp_pred and disp_true must have the same shape, got {u_pred.shape} and "
            f"{u_true.shape}"
        )
    spatial = u_pred.shape[1:]
    ndim = len(spatial)
    les = _as_mask(lesion, "lesion", ndims=None)
    brn = _as_mask(brain, "brain", ndims=None)
    if les.shape != spatial:
        raise ValueError(f"lesion: shape {les.shape} does not match the field's grid {spatial}")
    if brn.shape != spatial:
        raise ValueError(f"brain: shape {brn.shape} does not match the field's grid {spatial}")
    sp = _check_spacing(spacing, ndim)
    try:
        near = float(near_mm)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"near_mm: expected a number, got {near_mm!r}") from exc
    if not np.isfinite(near) or near < 0:
        raise ValueError(f"near_mm: expected a finite distance >= 0 in mm, got {near_mm!r}")
    if not les.any():
        raise ValueError("lesion: the lesion mask is empty; MDE regions are undefined")
    if not brn.any():
        raise ValueError("brain: the brain mask is empty")
    n_outside = int(np.count_nonzero(les & ~brn))
    if n_outside:
        logger.warning(
            "mean_deformation_error: %d lesion voxels lie outside the brain mask; "
            "in/near/far do not partition the brain",
            n_outside,
        )

    err2 = np.zeros(spatial, dtype=np.float64)
    for k in range(ndim):
        diff = (u_pred[k].astype(np.float64) - u_true[k].astype(np.float64)) * sp[k]
        err2 += diff * diff
    err = np.sqrt(err2)
    del err2

    dist = ndimage.distance_transform_edt(~les, sampling=sp)
    normal = brn & ~les
    regions = {
        "in": les,
        "near": normal & (dist <= near),
        "far": normal & (dist > near),
        "brain": brn,
    }
    return {name: _region_stats(err, reg) for name, reg in regions.items()}


def _check_jac(jac_det: object) -> np.ndarray:
    j = _as_array(jac_det, "jac_det").astype(np.float64)
    if j.ndim not in (2, 3):
        raise ValueError(f"jac_det: expected a 2D or 3D array, got shape {j.shape}")
    if j.size == 0:
        raise ValueError("jac_det: array is empty")
    _check_finite(j, "jac_det")
    return j


def folding_fraction(jac_det: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Fraction of voxels whose Jacobian determinant is ``<= 0`` (folded).

    Parameters
    ----------
    jac_det : numpy.ndarray
        2D or 3D Jacobian determinant of ``x -> x + u(x)`` (dimensionless), one value per voxel.
    mask : numpy.ndarray, optional
        Same-shape mask (``!= 0``) of the voxels to count (e.g. brain, lesion, non-lesion);
        ``None`` = all voxels.

    Returns
    -------
    float
        Fraction in [0, 1] (multiply by 100 for a percentage). An empty ``mask`` gives NaN (and a
        warning is logged).

    Raises
    ------
    ValueError
        ``jac_det`` not 2D/3D, empty, or with NaN/inf; ``mask`` with a different shape or NaN.

    Notes
    -----
    GIRNet's upstream code counts ``det J < 0`` (``neg_Jdet_count``),
    we count ``det J <= 0`` (non-invertible or folded).
    """
    j = _check_jac(jac_det)
    m = _optional_mask(mask, j.shape, "mask")
    n = int(np.count_nonzero(m))
    if n == 0:
        logger.warning("folding_fraction: mask is empty; returning NaN")
        return float("nan")
    return float(np.count_nonzero((j <= 0) & m) / n)


def log_jacobian_std(
    jac_det: np.ndarray, mask: np.ndarray | None = None, eps: float = 1e-6
) -> float:
    """Standard deviation of ``log(clip(det J, eps))`` -- smoothness of a deformation.

    Parameters
    ----------
    jac_det : numpy.ndarray
        2D or 3D Jacobian determinant (dimensionless).
    mask : numpy.ndarray, optional
        Same-shape mask (``!= 0``) of the voxels to use; ``None`` = all voxels.
    eps : float
        Lower clip applied before the logarithm so that folded voxels (``det J <= 0``) stay
        finite; must be > 0. Default 1e-6.

    Returns
    -------
    float
        Population standard deviation (``ddof=0``) of the log-Jacobian in the mask; 0 for the
        identity. An empty ``mask`` gives NaN (and a warning is logged).

    Raises
    ------
    ValueError
        As :func:`folding_fraction`, or ``eps`` not a finite number > 0.

    Notes
    -----
    Common deformation-regularity measure (e.g. Learn2Reg challenge "SDlogJ"; Hering et al. 2022,
    IEEE TMI 42(3)).
    """
    j = _check_jac(jac_det)
    m = _optional_mask(mask, j.shape, "mask")
    try:
        e = float(eps)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"eps: expected a number, got {eps!r}") from exc
    if not np.isfinite(e) or e <= 0:
        raise ValueError(f"eps: expected a finite number > 0, got {eps!r}")
    if not m.any():
        logger.warning("log_jacobian_std: mask is empty; returning NaN")
        return float("nan")
    return float(np.log(np.clip(j[m], e, None)).std())
