"""Preprocessing of skull-stripped T1 scans for GIRNet: brain mask, intensities, affine alignment.

GIRNet (method.md, section 1.8) aligns every T1 scan affinely (12 DOF) to the MNI152 2009a
symmetric atlas, crops the atlas grid to 160 x 192 x 144 voxels and min-max scales intensities
to [0, 1]. This module does the same with SimpleITK (Mattes mutual information, multi-resolution,
a similarity stage then a 12-DOF affine stage) instead of FreeSurfer's ``mri_robust_register``,
and resamples with scipy.

Geometry conventions (docs/conventions.md): volumes are :class:`~napari_girnet.data.volume.Volume`
objects with a voxel-to-world affine in RAS+ mm. An :class:`AffineAlignment` holds a 4x4 matrix
that maps **atlas (fixed) world RAS mm -> scan (moving) world RAS mm**, i.e. the pull-back used
to sample the scan on the atlas grid. SimpleITK works in LPS: ``lps = diag(-1, -1, 1) @ ras``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from napari_girnet.data.atlas import Atlas, load_atlas_full
from napari_girnet.data.volume import Volume

__all__ = [
    "ALIGNMENT_MIN_QUALITY",
    "PREPARE_ALIGNMENT",
    "AffineAlignment",
    "PreparedScan",
    "PreprocessError",
    "affine_align",
    "brain_mask",
    "normalize_intensity",
    "prepare_scan",
    "resample",
    "resample_like",
    "to_native",
    "to_working_grid",
]

logger = logging.getLogger(__name__)

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


class PreprocessError(ValueError):
    """Raised when a scan cannot be preprocessed (empty brain, constant image, grid mismatch)."""


def _label(volume: Volume) -> str:
    return volume.name or "volume"


def _check_same_grid(volume: Volume, mask: Volume, what: str = "mask") -> None:
    if not volume.same_grid(mask):
        raise PreprocessError(
            f"{_label(volume)}: {what} {_label(mask)!r} is not on the volume's grid "
            f"(shapes {volume.shape} vs {mask.shape}, or different affines)"
        )


# --------------------------------------------------------------------------- brain mask
def _background_value(array: np.ndarray) -> float:
    """Most frequent value on the six faces of the grid (the background of a stripped scan)."""
    faces = np.concatenate(
        [
            array[[0, -1], :, :].ravel(),
            array[:, [0, -1], :].ravel(),
            array[:, :, [0, -1]].ravel(),
        ]
    )
    values, counts = np.unique(faces, return_counts=True)
    best = int(np.argmax(counts))
    if counts[best] >= 0.2 * faces.size:
        return float(values[best])
    # no dominant value (noisy or non-constant background): the faces' median
    return float(np.median(faces))


def brain_mask(scan: Volume, tolerance: float = 1e-3) -> Volume:
    """Brain mask of a skull-stripped scan.

    The background is the most frequent value on the six faces of the grid (the median of the
    faces if no value covers 20 % of them), so a constant non-zero or negative background works
    (the MS T1 of open_ms_data is N4-corrected float with values down to -51; the TCGA T1 is
    int16 down to -69). Brain = voxels whose value differs from the background by more than
    ``tolerance`` times the 99.9th percentile of ``|value - background|``; then the largest
    6-connected component is kept and its holes are filled (3D), so dark brain voxels that
    happen to equal the background value are kept when they are enclosed.

    Parameters
    ----------
    scan : Volume
        Skull-stripped scan, any grid and dtype.
    tolerance : float
        Relative tolerance, see above.

    Returns
    -------
    Volume
        bool mask on ``scan``'s grid.

    Raises
    ------
    PreprocessError
        If the scan holds NaN/inf or nothing differs from the background.
    """
    array = np.asarray(scan.array)
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise PreprocessError(f"{_label(scan)}: contains NaN or infinite values")
    array = array.astype(np.float32, copy=False)
    background = _background_value(array)
    deviation = np.abs(array - np.float32(background))
    nonzero = deviation[deviation > 0]
    if nonzero.size == 0:
        raise PreprocessError(f"{_label(scan)}: the image is constant ({background}): no brain")
    threshold = tolerance * float(np.percentile(nonzero, 99.9))
    foreground = deviation > threshold
    labels, n = ndi.label(foreground)
    if n == 0:
        raise PreprocessError(f"{_label(scan)}: empty brain mask (background {background})")
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = labels == int(np.argmax(sizes))
    mask = ndi.binary_fill_holes(largest)
    logger.debug(
        "%s: background %.4g, %d components, brain %d voxels",
        _label(scan),
        background,
        n,
        int(mask.sum()),
    )
    return scan.with_array(mask, name=f"{_label(scan)} brain mask")


# --------------------------------------------------------------------------- intensities
def normalize_intensity(
    scan: Volume, mask: Volume | None = None, low: float = 0.5, high: float = 99.5
) -> Volume:
    """Percentile-robust min-max scaling to [0, 1] (GIRNet's intensity convention).

    ``p_low`` and ``p_high`` are the ``low``-th and ``high``-th percentiles of the scan's
    values inside ``mask``; values are clipped to ``[p_low, p_high]`` and mapped linearly to
    [0, 1]. Voxels outside the mask are set to 0.

    Parameters
    ----------
    scan : Volume
        Any grid.
    mask : Volume or None
        Brain mask on ``scan``'s grid (bool or 0/1). ``None`` uses the whole grid; for a
        skull-stripped scan pass :func:`brain_mask` ``(scan)`` so the background is 0.
    low, high : float
        Percentiles in [0, 100], ``low < high``.

    Returns
    -------
    Volume
        float32 on ``scan``'s grid.

    Raises
    ------
    PreprocessError
        If the mask is on another grid or empty, the percentiles are invalid, or the scan is
        constant inside the mask (``p_high == p_low``).
    """
    if not (0.0 <= low < high <= 100.0):
        raise PreprocessError(
            f"{_label(scan)}: percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}"
        )
    array = np.asarray(scan.array, dtype=np.float32)
    if mask is None:
        inside = np.ones(array.shape, dtype=bool)
    else:
        _check_same_grid(scan, mask)
        inside = np.asarray(mask.array).astype(bool)
    values = array[inside]
    if values.size == 0:
        raise PreprocessError(f"{_label(scan)}: the mask is empty")
    if not np.all(np.isfinite(values)):
        raise PreprocessError(f"{_label(scan)}: contains NaN or infinite values inside the mask")
    p_low, p_high = (float(v) for v in np.percentile(values, [low, high]))
    if not p_high > p_low:
        raise PreprocessError(
            f"{_label(scan)}: intensities are constant inside the mask ({p_low}): cannot normalise"
        )
    out = (np.clip(array, p_low, p_high) - np.float32(p_low)) / np.float32(p_high - p_low)
    out = out.astype(np.float32, copy=False)
    out[~inside] = 0.0
    return scan.with_array(out)


# --------------------------------------------------------------------------- resampling
def resample(
    volume: Volume,
    shape: Sequence[int],
    affine: np.ndarray,
    transform: np.ndarray | None = None,
    order: int = 1,
    fill: float = 0.0,
) -> Volume:
    """Sample ``volume`` at the voxel centres of a target grid.

    Target voxel ``v`` is sampled at source world point ``transform @ affine @ v`` (one
    ``scipy.ndimage.affine_transform`` call with the composed voxel-to-voxel matrix
    ``inv(volume.affine) @ transform @ affine``).

    Parameters
    ----------
    volume : Volume
        Source volume (any grid).
    shape : sequence of 3 int
        Target grid shape ``(X, Y, Z)``.
    affine : numpy.ndarray
        Target voxel-to-world affine (4x4, RAS mm).
    transform : numpy.ndarray or None
        4x4 RAS mm matrix mapping **target world -> source world** (for an
        :class:`AffineAlignment` ``a`` from scan to atlas, ``a.matrix`` samples the scan on the
        atlas grid). ``None`` = identity (the two grids share the world frame).
    order : int
        Spline order: 0 (nearest; for labels and masks: dtype kept, values never mixed) or 1
        (linear; float32 output). Orders 2-5 are accepted (float32 output, spline prefilter).
    fill : float
        Value for target points outside the source grid.

    Returns
    -------
    Volume
        On the target grid (``source_affine`` None); same name and meta as ``volume``.

    Raises
    ------
    PreprocessError
        For a bad shape, affine or transform, or an order outside 0..5.
    """
    label = _label(volume)
    shape_t = tuple(int(s) for s in shape)
    if len(shape_t) != 3 or min(shape_t) < 1:
        raise PreprocessError(f"{label}: target shape must be 3 positive ints, got {shape}")
    if order not in range(6):
        raise PreprocessError(f"{label}: interpolation order must be 0..5, got {order}")
    target = np.asarray(affine, dtype=np.float64)
    mapping = np.eye(4) if transform is None else np.asarray(transform, dtype=np.float64)
    for name, m in (("affine", target), ("transform", mapping)):
        if m.shape != (4, 4) or not np.all(np.isfinite(m)) or abs(np.linalg.det(m)) < 1e-12:
            raise PreprocessError(f"{label}: target {name} must be a finite invertible 4x4 matrix")
    vox = np.linalg.inv(volume.affine) @ mapping @ target
    source = np.asarray(volume.array)
    if order == 0:
        was_bool = source.dtype == np.bool_
        data = source.view(np.uint8) if was_bool else source
        out = ndi.affine_transform(
            data,
            vox[:3, :3],
            vox[:3, 3],
            output_shape=shape_t,
            order=0,
            mode="constant",
            cval=fill,
            prefilter=False,
        )
        if was_bool:
            out = out.astype(bool)
    else:
        out = ndi.affine_transform(
            source.astype(np.float32, copy=False),
            vox[:3, :3],
            vox[:3, 3],
            output_shape=shape_t,
            output=np.float32,
            order=order,
            mode="constant",
            cval=fill,
            prefilter=order > 1,
        )
    return Volume(out, target, name=volume.name, meta=dict(volume.meta))


def resample_like(
    volume: Volume,
    reference: Volume,
    transform: np.ndarray | None = None,
    order: int = 1,
    fill: float = 0.0,
) -> Volume:
    """:func:`resample` onto ``reference``'s grid (shape and affine)."""
    return resample(volume, reference.shape, reference.affine, transform, order, fill)


# --------------------------------------------------------------------------- alignment
ALIGNMENT_MIN_QUALITY = 0.90
"""Smallest brain-mask Dice (:attr:`AffineAlignment.quality`) of an alignment taken as good.

Correct alignments of the real 1 mm scans score 0.94-0.97; the glioma with wrong orientation
labels (a 90 or 180 degree turn in the header) scored 0.82-0.87 without the turned retry of
:func:`affine_align` (``benchmarks/alignment.py``). Below this value :func:`affine_align` retries
with axis-aligned turns and :func:`prepare_scan` logs a warning (if still below) and sets
:attr:`PreparedScan.alignment_ok` to False."""


@dataclass(frozen=True)
class AffineAlignment:
    """Result of :func:`affine_align`.

    Attributes
    ----------
    matrix : numpy.ndarray
        4x4, maps **fixed (atlas) world RAS mm -> moving (scan) world RAS mm**: the pull-back
        that samples the scan on the atlas grid (``resample(scan, ..., transform=matrix)``).
    metric_value : float
        Final Mattes mutual information (negative; lower is better) at the finest level.
    iterations : int
        Optimiser iterations summed over stages and levels.
    seconds : float
        Wall time of the alignment.
    stages : tuple of str
        Transform stages run, e.g. ``("search", "rigid", "similarity", "affine")``.
    quality : float
        Dice (in [0, 1]) between the fixed brain mask and the moving brain mask mapped through
        ``matrix``, both at the registration resolution; NaN when a mask is missing.
    init : str
        Which starting rotation won the coarse search: ``"identity"`` (the world frames as
        given), ``"header"`` (the scan's voxel axes taken as anatomical axes: its oblique
        direction cosines undone), ``"identity+grid"`` / ``"header+grid"`` (one of those turned
        by a grid rotation), ``"identity+turn"`` / ``"header+turn"`` (a 90 / 120 degree turn,
        from the retry after a poor first result), ``"moments"`` (no search) or ``""`` (not
        recorded).
    init_rotation_deg : float
        Rotation angle (degrees) of the starting transform chosen by the search.

    Notes
    -----
    ``matrix`` is stored read-only. :meth:`inverse` gives scan world -> atlas world.
    """

    matrix: np.ndarray
    metric_value: float = float("nan")
    iterations: int = 0
    seconds: float = 0.0
    stages: tuple[str, ...] = field(default=())
    quality: float = float("nan")
    init: str = ""
    init_rotation_deg: float = 0.0

    def __post_init__(self) -> None:
        m = np.array(self.matrix, dtype=np.float64)
        if m.shape != (4, 4) or not np.all(np.isfinite(m)) or abs(np.linalg.det(m)) < 1e-12:
            raise PreprocessError(f"alignment matrix must be a finite invertible 4x4, got {m}")
        m.setflags(write=False)
        object.__setattr__(self, "matrix", m)

    @property
    def ok(self) -> bool:
        """False when :attr:`quality` is below :data:`ALIGNMENT_MIN_QUALITY` (NaN counts as ok)."""
        return not self.quality < ALIGNMENT_MIN_QUALITY

    def inverse(self) -> AffineAlignment:
        """The inverse mapping: scan world RAS mm -> atlas world RAS mm."""
        return replace(self, matrix=np.linalg.inv(self.matrix))

    def map_points(self, xyz: np.ndarray) -> np.ndarray:
        """Map atlas world points ``(N, 3)`` RAS mm to scan world points ``(N, 3)`` RAS mm."""
        xyz = np.atleast_2d(np.asarray(xyz, dtype=np.float64))
        return xyz @ self.matrix[:3, :3].T + self.matrix[:3, 3]


def _lps_direction(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Spacing (mm) and orthonormal LPS direction cosines (columns) of ``volume``'s grid."""
    lps = _RAS_TO_LPS @ volume.affine
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    direction = lps[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        # ITK wants orthonormal direction cosines: use the nearest rotation (polar decomposition)
        u, _, vt = np.linalg.svd(direction)
        direction = u @ vt
        logger.warning("%s: sheared affine, nearest orthonormal one used", _label(volume))
    return spacing, direction


def _to_sitk(volume: Volume, array: np.ndarray | None = None):
    """SimpleITK image (float32) with LPS origin/spacing/direction from the RAS affine."""

    data = np.asarray(volume.array if array is None else array, dtype=np.float32)
    spacing, direction = _lps_direction(volume)
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in (_RAS_TO_LPS @ volume.affine)[:3, 3]])
    image.SetDirection([float(d) for d in direction.ravel()])
    return image


def _sitk_matrix(transform) -> np.ndarray:
    """4x4 LPS matrix of a SimpleITK matrix-offset transform (Euler, Similarity, Affine)."""
    a = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
    t = np.asarray(transform.GetTranslation(), dtype=np.float64)
    c = np.asarray(transform.GetCenter(), dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = t + c - a @ c
    return m


def _downsample(volume: Volume, resolution_mm: float) -> Volume:
    """Gaussian-smoothed resampling of ``volume`` to a coarser grid of ``resolution_mm``.

    The new grid (:func:`_coarse_grid`) keeps the directions and the field-of-view centre of
    ``volume``; axes whose spacing is already >= ``resolution_mm`` are kept. Anti-aliasing
    sigma per axis is ``(factor - 1) / 2`` voxels (as ``skimage.transform.resize``).
    """
    factor = np.maximum(resolution_mm / volume.spacing, 1.0)
    if np.allclose(factor, 1.0):
        return volume
    shape, affine = _coarse_grid(volume, resolution_mm)
    smooth = ndi.gaussian_filter(
        np.asarray(volume.array, dtype=np.float32), sigma=(factor - 1.0) / 2.0, mode="constant"
    )
    return resample(volume.with_array(smooth), shape, affine, order=1)


def _coarse_grid(volume: Volume, resolution_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the grid :func:`_downsample` gives at ``resolution_mm``."""
    factor = np.maximum(resolution_mm / volume.spacing, 1.0)
    shape = np.asarray(volume.shape)
    new_shape = np.maximum(np.ceil(shape / factor - 1e-6).astype(int), 1)
    affine = volume.affine.copy()
    affine[:3, :3] = volume.affine[:3, :3] * factor
    centre = volume.voxel_to_world((shape - 1) / 2.0)[0]
    affine[:3, 3] = centre - affine[:3, :3] @ ((new_shape - 1) / 2.0)
    return (int(new_shape[0]), int(new_shape[1]), int(new_shape[2])), affine


@dataclass(frozen=True, eq=False)
class _FixedBase:
    """The fixed side of a registration at one resolution (cached per atlas object)."""

    image: Volume
    metric_mask: Volume | None  # brain mask dilated by 5 mm (where the metric samples)
    brain: Volume | None  # brain mask (bool)


def _fixed_base(
    fixed: Volume, fixed_mask: Volume | None, resolution_mm: float | None
) -> _FixedBase:
    base = fixed if resolution_mm is None else _downsample(fixed, resolution_mm)
    if fixed_mask is None:
        return _FixedBase(base, None, None)
    coverage = resample_like(
        fixed_mask.with_array(np.asarray(fixed_mask.array, dtype=np.float32)), base
    )
    brain = coverage.array > 0.5
    radius = np.maximum(np.round(5.0 / base.spacing).astype(int), 1)
    grown = ndi.binary_dilation(brain, structure=np.ones(tuple(2 * radius + 1), dtype=bool))
    return _FixedBase(base, base.with_array(grown), base.with_array(brain))


@functools.lru_cache(maxsize=8)
def _fixed_pyramid_base(
    fixed: Volume, fixed_mask: Volume | None, resolution_mm: float | None
) -> _FixedBase:
    """Downsampled fixed image, metric mask and brain mask, cached per object identity.

    The atlas volumes are cached singletons, so repeated alignments to the same atlas reuse
    this work.
    """
    return _fixed_base(fixed, fixed_mask, resolution_mm)


def _sitk_seed(seed: int) -> int:
    """Map any int to a SimpleITK seed in 1 .. 2**32 - 1 (0 means wall clock in SimpleITK)."""
    return int(seed) % (2**32 - 1) + 1


def _euler_matrix(degrees: Sequence[float]) -> np.ndarray:
    """3x3 rotation ``Rz @ Ry @ Rx`` for angles ``(x, y, z)`` in degrees."""
    rx, ry, rz = np.radians(np.asarray(degrees, dtype=np.float64))
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    return (
        np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
        @ np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
        @ np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    )


def _nearest_rotation(matrix: Sequence[float]) -> list[float]:
    """Rotation part (polar decomposition) of a 3x3 matrix, flattened row-major for SimpleITK."""
    u, _, vt = np.linalg.svd(np.asarray(matrix, dtype=np.float64).reshape(3, 3))
    return [float(v) for v in (u @ vt).ravel()]


def _rotation_angle_deg(matrix: np.ndarray) -> float:
    """Angle (degrees) of the rotation part (polar decomposition) of a 3x3 matrix."""
    u, _, vt = np.linalg.svd(np.asarray(matrix, dtype=np.float64).reshape(3, 3))
    cos = (float(np.trace(u @ vt)) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def _obliquity(direction: np.ndarray) -> np.ndarray | None:
    """Rotation ``O`` with ``direction = O @ P``, ``P`` the nearest signed axis permutation.

    ``O`` is what the header's oblique direction cosines add to an axis-aligned grid (identity
    for a straight header). ``None`` when the nearest permutation is ambiguous (45 degrees).
    """
    perm = np.zeros((3, 3))
    rows = np.argmax(np.abs(direction), axis=0)
    if len(set(rows.tolist())) < 3:
        return None
    for col, row in enumerate(rows):
        perm[row, col] = np.sign(direction[row, col])
    return direction @ perm.T


def _header_rotation(moving: Volume, fixed: Volume) -> np.ndarray | None:
    """LPS rotation (fixed world -> moving world) that takes each grid's voxel axes as anatomy."""
    o_moving = _obliquity(_lps_direction(moving)[1])
    o_fixed = _obliquity(_lps_direction(fixed)[1])
    if o_moving is None or o_fixed is None:
        return None
    return o_moving @ o_fixed.T


def _cube_turns() -> list[np.ndarray]:
    """The rotations that map the coordinate axes onto (signed) coordinate axes, up to 120 deg.

    15 of the 24: the identity, the six 90 degree turns about an axis and the eight 120 degree
    turns about a diagonal. The 180 degree ones are left out: SimpleITK's versor transforms
    (similarity stage) are singular there, so their refinement does not converge.
    """
    out = []
    for perm in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)):
        for signs in np.ndindex(2, 2, 2):
            turn = np.zeros((3, 3))
            for col, row in enumerate(perm):
                turn[row, col] = 1.0 if signs[col] == 0 else -1.0
            if np.linalg.det(turn) > 0 and _rotation_angle_deg(turn) < 121.0:
                out.append(turn)
    return out


def _centre_lps(mask: np.ndarray, volume: Volume) -> np.ndarray:
    """Centre of mass (LPS mm) of a bool/float mask on ``volume``'s grid."""
    ijk = np.asarray(ndi.center_of_mass(np.asarray(mask, dtype=np.float32)), dtype=np.float64)
    return (_RAS_TO_LPS[:3, :3] @ volume.voxel_to_world(ijk)[0]).astype(np.float64)


@functools.lru_cache(maxsize=8)
def _fixed_search_base(
    fixed: Volume, fixed_mask: Volume | None, resolution_mm: float | None, search_mm: float
) -> _FixedBase:
    """:func:`_fixed_pyramid_base` at the coarse-search resolution (cached likewise)."""
    base = _fixed_pyramid_base(fixed, fixed_mask, resolution_mm)
    return _fixed_base(base.image, base.brain, search_mm)


def _search_rotations(degrees: float, header: np.ndarray | None) -> list[tuple[str, np.ndarray]]:
    """Starting rotations (LPS, fixed -> moving) of the coarse search.

    The identity and, for an oblique header, the header rotation (:func:`_header_rotation`),
    each composed with the 27 rotations of angles ``(-degrees, 0, degrees)`` about the three
    axes (``degrees`` 0: the bases alone).
    """
    bases = [("identity", np.eye(3))]
    if header is not None and _rotation_angle_deg(header) > 1.0:
        bases.append(("header", header))
    angles = (0.0,) if degrees == 0 else (0.0, -float(degrees), float(degrees))
    out = []
    for name, base in bases:
        for ax in angles:
            for ay in angles:
                for az in angles:
                    turned = ax != 0 or ay != 0 or az != 0
                    label = f"{name}+grid" if turned else name
                    out.append((label, base @ _euler_matrix((ax, ay, az))))
    return out


_SEARCH_ITERATIONS = 40
"""Optimiser iterations of each refined start of the coarse search."""


def _euler(centre: np.ndarray, rotation: np.ndarray, translation: np.ndarray):
    transform = sitk.Euler3DTransform()
    transform.SetCenter([float(c) for c in centre])
    transform.SetMatrix([float(r) for r in np.asarray(rotation).ravel()])
    transform.SetTranslation([float(t) for t in translation])
    return transform


def _new_registration(threads: int, mask) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(int(threads))
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    if mask is not None:
        reg.SetMetricFixedMask(mask)
    reg.SetInterpolator(sitk.sitkLinear)
    return reg


def _correlation_scores(
    fixed: Volume, region: np.ndarray, moving: Volume, matrices_lps: list[np.ndarray]
) -> np.ndarray:
    """Negative Pearson correlation (lower is better) of ``fixed`` and ``moving`` in ``region``.

    For each 4x4 LPS matrix (fixed world -> moving world) the moving image is sampled
    (linear, 0 outside) at the fixed voxels where ``region`` is true.
    """
    ijk = np.argwhere(region).astype(np.float64)
    values_f = np.asarray(fixed.array, dtype=np.float64)[region]
    points = fixed.voxel_to_world(ijk)  # RAS
    to_vox = np.linalg.inv(moving.affine)
    data = np.asarray(moving.array, dtype=np.float32)
    scores = []
    for lps in matrices_lps:
        ras = _RAS_TO_LPS @ lps @ _RAS_TO_LPS
        vox = to_vox @ ras
        coords = points @ vox[:3, :3].T + vox[:3, 3]
        values_m = ndi.map_coordinates(data, coords.T, order=1, mode="constant", cval=0.0)
        if values_m.std() == 0 or values_f.std() == 0:
            scores.append(np.inf)
        else:
            scores.append(-float(np.corrcoef(values_f, values_m)[0, 1]))
    return np.asarray(scores)


def _coarse_search(
    fixed: _FixedBase,
    moving: Volume,
    centres: tuple[np.ndarray, np.ndarray],
    rotations: list[tuple[str, np.ndarray]],
    keep: int,
    threads: int,
    label: str,
    scale: bool = True,
) -> tuple[Any, str, int]:
    """Best similarity start: rank the rotations, refine the ``keep`` best, keep the best.

    At the search resolution: every rotation (about the fixed brain centre, with the brain
    centres matched) is ranked by the correlation of the two images in the fixed metric mask
    (:func:`_correlation_scores`); the ``keep`` best are refined (``Similarity3DTransform``,
    or ``Euler3DTransform`` when ``scale`` is False; Mattes MI on every masked fixed voxel, so
    no random sample is involved) and the one with the best final MI wins. Returns the
    transform, its start's label and the iterations.
    """
    centre_f, centre_m = centres
    shift = centre_m - centre_f
    region = (
        np.ones(fixed.image.shape, bool) if fixed.metric_mask is None else fixed.metric_mask.array
    )
    starts = []
    for _, rot in rotations:
        m = np.eye(4)
        m[:3, :3] = rot
        m[:3, 3] = centre_m - rot @ centre_f
        starts.append(m)
    ranks = _correlation_scores(fixed.image, region, moving, starts)
    order = np.argsort(ranks, kind="stable")[: max(int(keep), 1)]
    fixed_image, moving_image = _to_sitk(fixed.image), _to_sitk(moving)
    mask = None
    if fixed.metric_mask is not None:
        mask = sitk.Cast(_to_sitk(fixed.metric_mask), sitk.sitkUInt8)
    best: tuple[float, Any, str] | None = None
    total = 0
    for index in order:
        name, rot = rotations[int(index)]
        transform = sitk.Similarity3DTransform() if scale else sitk.Euler3DTransform()
        transform.SetCenter([float(c) for c in centre_f])
        transform.SetMatrix([float(r) for r in rot.ravel()])
        transform.SetTranslation([float(t) for t in shift])
        opt = _new_registration(threads, mask)
        opt.SetMetricSamplingStrategy(opt.NONE)
        opt.SetOptimizerAsRegularStepGradientDescent(
            learningRate=4.0,
            minStep=0.1,
            numberOfIterations=_SEARCH_ITERATIONS,
            relaxationFactor=0.5,
            gradientMagnitudeTolerance=1e-8,
        )
        opt.SetOptimizerScalesFromPhysicalShift()
        opt.SetInitialTransform(transform, inPlace=True)
        counter = [0]
        opt.AddCommand(sitk.sitkIterationEvent, lambda c=counter: c.__setitem__(0, c[0] + 1))
        try:
            opt.Execute(fixed_image, moving_image)
        except RuntimeError:  # the start left too little overlap
            continue
        total += counter[0]
        value = float(opt.GetMetricValue())
        logger.debug(
            "%s: search start %s (%.0f deg): correlation %.3f, refined MI %.4f",
            label,
            name,
            _rotation_angle_deg(rot),
            -ranks[int(index)],
            value,
        )
        if best is None or value < best[0]:
            best = (value, transform, name)
    if best is None:
        raise PreprocessError(f"{label}: affine alignment: the coarse rotation search failed")
    return best[1], best[2], total


def affine_align(
    moving: Volume,
    fixed: Volume,
    *,
    moving_mask: Volume | None = None,
    fixed_mask: Volume | None = None,
    dof: int = 12,
    seed: int = 0,
    shrink_factors: Sequence[int] = (4, 2, 1),
    smoothing_sigmas: Sequence[float] = (4.0, 2.0, 1.0),
    resolution_mm: float | None = 3.0,
    sampling_percentage: float = 0.2,
    iterations: int = 100,
    threads: int = 1,
    search_degrees: float | None = 30.0,
    search_resolution_mm: float = 6.0,
    search_keep: int = 2,
) -> AffineAlignment:
    """Affine alignment of a skull-stripped scan (moving) to the atlas (fixed) with SimpleITK.

    Method (SimpleITK ``ImageRegistrationMethod``):

    1. Both images are resampled to ``resolution_mm`` (Gaussian anti-aliasing; default 3 mm),
       the moving image is set to 0 outside ``moving_mask``.
    2. Start: the brain centres of mass (of the masks, else of the intensities) are matched.
       With ``search_degrees`` set, a coarse rotation search picks the starting rotation at
       ``search_resolution_mm`` (6 mm): the identity and, for an oblique header, the header
       rotation (the scan's voxel axes taken as anatomical axes), each turned by the 27
       rotations of ``(-d, 0, d)`` degrees about the three axes, are ranked by the correlation
       of the two images in the fixed metric mask; the ``search_keep`` best are refined
       (``Similarity3DTransform``, or ``Euler3DTransform`` for 6 DOF; Mattes MI on every masked
       fixed voxel, 40 iterations) and the best refined one is the start. This recovers scans
       whose header or head position is rotated by up to ~45 degrees (with the centres of mass
       alone, a 30 degree oblique header left the optimiser in a wrong local optimum).
    3. For ``dof`` 9 and 12, a similarity stage (rotation, translation, isotropic scale;
       ``Similarity3DTransform``) runs on the coarse pyramid levels (all but the finest).
    4. The final stage (``Euler3DTransform`` for 6 DOF, ``Similarity3DTransform`` for 7,
       ``ScaleVersor3DTransform`` for 9, ``AffineTransform`` for 12), started from the previous
       one, runs on all pyramid levels.
    5. Quality: Dice of the two brain masks at ``resolution_mm`` after alignment
       (:attr:`AffineAlignment.quality`). Below :data:`ALIGNMENT_MIN_QUALITY` (wrong
       orientation labels?) steps 2-4 are run again with the identity and header starts turned
       by the axis-aligned rotations of 90 and 120 degrees and the better result is kept (a
       180 degree error is not recovered, only flagged).

    Stages 3-4 maximise Mattes mutual information (32 bins) on a random sample of
    ``sampling_percentage`` of the fixed voxels drawn with ``seed``, restricted to the fixed
    mask dilated by 5 mm (so the brain outline counts), with regular-step gradient descent
    (maximum step 2 mm, minimum 0.01, relaxation 0.5, ``iterations`` per level) and
    physical-shift parameter scales. Pyramid: ``shrink_factors`` (voxels of the
    ``resolution_mm`` grid: 12 / 6 / 3 mm by default) and ``smoothing_sigmas`` (mm). If gradient
    descent drifts to a worse metric value on the finest level, the best position seen there is
    kept.

    Images are handed to SimpleITK in LPS (``lps = diag(-1, -1, 1) @ ras``) with their own
    spacing, direction and origin, so any voxel orientation (LPS, LAS, RAS, oblique) and any
    field of view works; the result is converted back to RAS.

    Determinism: SimpleITK's global default number of threads is set to ``threads`` (default
    1) for the duration of the call and restored afterwards (the registration's own thread
    setting does not reach every internal filter). With ``threads=1`` the same inputs and seed
    give a bit-identical matrix (tested).

    Parameters
    ----------
    moving : Volume
        The scan, skull-stripped (normalised to [0, 1] preferred; any grid).
    fixed : Volume
        The atlas image, e.g. ``load_atlas_full().image``.
    moving_mask, fixed_mask : Volume or None
        Brain masks on the moving / fixed grids.
    dof : int
        6 (rigid), 7 (similarity), 9 (rigid + anisotropic scale) or 12 (affine).
    seed : int
        Seed of the metric's random sampling.
    shrink_factors, smoothing_sigmas : sequence
        Pyramid levels, coarse to fine, same length.
    resolution_mm : float or None
        Resolution at which the registration runs; ``None`` keeps the input grids.
    sampling_percentage : float
        Fraction of (masked) fixed voxels sampled per iteration, in (0, 1].
    iterations : int
        Maximum optimiser iterations per level and stage.
    threads : int
        SimpleITK threads during the call (1 = deterministic).
    search_degrees : float or None
        Step (degrees) of the coarse rotation search; 0 searches the identity and header
        starts only; ``None`` skips the search (centres of mass only).
    search_resolution_mm : float
        Resolution (mm) of the coarse search.
    search_keep : int
        Number of best-scoring starts refined rigidly.

    Returns
    -------
    AffineAlignment
        ``matrix`` maps fixed (atlas) world RAS mm -> moving (scan) world RAS mm.

    Raises
    ------
    PreprocessError
        For a bad ``dof`` or pyramid settings, masks on the wrong grid, an empty image, or a
        failed optimisation.
    """

    if dof not in (6, 7, 9, 12):
        raise PreprocessError(f"{_label(moving)}: dof must be 6, 7, 9 or 12, got {dof}")
    shrink = [int(s) for s in shrink_factors]
    sigmas = [float(s) for s in smoothing_sigmas]
    if len(shrink) != len(sigmas) or not shrink or min(shrink) < 1:
        raise PreprocessError(
            f"{_label(moving)}: shrink_factors {shrink_factors} and smoothing_sigmas "
            f"{smoothing_sigmas} must be non-empty, of the same length, factors >= 1"
        )
    if not 0.0 < sampling_percentage <= 1.0:
        raise PreprocessError(f"sampling_percentage must be in (0, 1], got {sampling_percentage}")
    if resolution_mm is not None and not resolution_mm > 0:
        raise PreprocessError(f"resolution_mm must be > 0 or None, got {resolution_mm}")
    if search_degrees is not None and not (0 <= search_degrees <= 90 and search_resolution_mm > 0):
        raise PreprocessError(
            f"search_degrees must be in [0, 90] or None and search_resolution_mm > 0, got "
            f"{search_degrees}, {search_resolution_mm}"
        )
    start = time.perf_counter()

    moving_array = np.asarray(moving.array, dtype=np.float32)
    moving_brain: Volume | None = None
    if moving_mask is not None:
        _check_same_grid(moving, moving_mask, "moving mask")
        inside = np.asarray(moving_mask.array).astype(bool)
        moving_array = np.where(inside, moving_array, np.float32(0.0))
        moving_brain = moving_mask.with_array(inside)
    if fixed_mask is not None:
        _check_same_grid(fixed, fixed_mask, "fixed mask")
    moving_work = moving.with_array(moving_array)
    if resolution_mm is not None:
        moving_work = _downsample(moving_work, resolution_mm)
        if moving_brain is not None:
            moving_brain = resample_like(moving_brain, moving_work, order=0)
    fixed_base = _fixed_pyramid_base(fixed, fixed_mask, resolution_mm)
    for vol in (moving_work, fixed_base.image):
        if not np.any(vol.array):
            raise PreprocessError(f"{_label(vol)}: image is empty (all zero): cannot align")
    search = None
    if search_degrees is not None:
        fixed_coarse = _fixed_search_base(fixed, fixed_mask, resolution_mm, search_resolution_mm)
        moving_coarse = _downsample(moving_work, search_resolution_mm)
        rotations = _search_rotations(search_degrees, _header_rotation(moving, fixed))
        search = (fixed_coarse, moving_coarse, rotations, int(search_keep))
    centres = (
        _centre_lps(
            fixed_base.image.array if fixed_base.brain is None else fixed_base.brain.array,
            fixed_base.image,
        ),
        _centre_lps(moving_work.array if moving_brain is None else moving_brain.array, moving_work),
    )

    def attempt(plan) -> tuple[np.ndarray, float, int, list[str], tuple[str, float], float]:
        lps, value, total, stages, init = _with_sitk_threads(
            threads,
            _run_registration,
            moving,
            moving_work,
            fixed_base,
            centres,
            plan,
            shrink,
            sigmas,
            dof,
            seed,
            sampling_percentage,
            iterations,
            threads,
        )
        ras = _RAS_TO_LPS @ lps @ _RAS_TO_LPS
        quality = float("nan")
        if moving_brain is not None and fixed_base.brain is not None:
            moved = resample_like(moving_brain, fixed_base.brain, transform=ras, order=0).array
            target = fixed_base.brain.array
            overlap = 2.0 * float(np.sum(moved & target))
            quality = overlap / max(int(moved.sum() + target.sum()), 1)
        return ras, value, total, stages, init, quality

    ras, value, total, stages, init, quality = attempt(search)
    if search is not None and quality < ALIGNMENT_MIN_QUALITY:
        # wrong orientation labels? try the axis-aligned turns (90 / 120 degrees)
        bases = [(name, rot) for name, rot in search[2] if "grid" not in name]
        turns = [(f"{name}+turn", rot @ turn) for name, rot in bases for turn in _cube_turns()]
        retry = attempt((search[0], search[1], turns, search[3]))
        logger.debug(
            "%s: poor alignment (Dice %.3f), turned retry %.3f", _label(moving), quality, retry[5]
        )
        if retry[5] > quality:
            ras, value, n, stages, init, quality = retry
            total += n
            stages = ["turn-search", *stages[1:]]
    seconds = time.perf_counter() - start
    logger.info(
        "%s: affine alignment (%s, start %s %.0f deg) done in %.1f s, %d iterations, "
        "Mattes MI %.4f, brain-mask Dice %.3f",
        _label(moving),
        "+".join(stages),
        init[0],
        init[1],
        seconds,
        total,
        value,
        quality,
    )
    return AffineAlignment(ras, value, total, seconds, tuple(stages), quality, init[0], init[1])


class _BestPosition:
    """Iteration observer: the best metric value of one pyramid level and its parameters.

    At an iteration event, SimpleITK's metric value belongs to the position before that
    iteration's step, i.e. the position recorded at the previous event (or the start).
    """

    def __init__(self, start: Sequence[float], level: int) -> None:
        self.position = tuple(start)
        self.level = level
        self.best: tuple[float, tuple[float, ...]] | None = None
        self.iterations = 0

    def update(self, reg: sitk.ImageRegistrationMethod) -> None:
        self.iterations += 1
        value = float(reg.GetMetricValue())
        if reg.GetCurrentLevel() == self.level and (self.best is None or value < self.best[0]):
            self.best = (value, self.position)
        self.position = tuple(reg.GetOptimizerPosition())


def _run_registration(
    moving: Volume,
    moving_work: Volume,
    fixed_base: _FixedBase,
    centres: tuple[np.ndarray, np.ndarray],
    search: tuple[_FixedBase, Volume, list[tuple[str, np.ndarray]], int] | None,
    shrink: list[int],
    sigmas: list[float],
    dof: int,
    seed: int,
    sampling_percentage: float,
    iterations: int,
    threads: int,
) -> tuple[np.ndarray, float, int, list[str], tuple[str, float]]:
    """The SimpleITK part of :func:`affine_align`; returns the LPS 4x4 matrix and statistics."""

    fixed_image = _to_sitk(fixed_base.image)
    moving_image = _to_sitk(moving_work)
    sitk_mask = None
    if fixed_base.metric_mask is not None:
        sitk_mask = sitk.Cast(_to_sitk(fixed_base.metric_mask), sitk.sitkUInt8)

    def run_stage(transform, name: str, levels: int) -> tuple[float, int]:
        reg = _new_registration(threads, sitk_mask)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        # SimpleITK treats seed 0 as "wall clock" (non-deterministic): shift ours by one
        reg.SetMetricSamplingPercentage(float(sampling_percentage), _sitk_seed(seed))
        reg.SetOptimizerAsRegularStepGradientDescent(
            learningRate=2.0,
            minStep=0.01,
            numberOfIterations=int(iterations),
            relaxationFactor=0.5,
            gradientMagnitudeTolerance=1e-8,
        )
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel(shrink[:levels])
        reg.SetSmoothingSigmasPerLevel(sigmas[:levels])
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        reg.SetInitialTransform(transform, inPlace=True)
        track = _BestPosition(transform.GetParameters(), levels - 1)
        reg.AddCommand(sitk.sitkIterationEvent, lambda: track.update(reg))
        tic = time.process_time()
        try:
            reg.Execute(fixed_image, moving_image)
        except RuntimeError as err:
            raise PreprocessError(
                f"{_label(moving)}: affine alignment ({name} stage) failed: {err}"
            ) from err
        value = float(reg.GetMetricValue())
        if track.best is not None and track.best[0] < value - 1e-4:
            # gradient descent drifted away from a better position of the finest level
            logger.debug(
                "%s: %s stage drifted (%.4f > %.4f)", _label(moving), name, value, track.best[0]
            )
            value = track.best[0]
            transform.SetParameters(track.best[1])
        logger.debug(
            "%s: %s stage, %.2f s CPU, metric %.4f after %d iterations (%s)",
            _label(moving),
            name,
            time.process_time() - tic,
            value,
            track.iterations,
            reg.GetOptimizerStopConditionDescription(),
        )
        return value, track.iterations

    stages: list[str] = []
    total = 0
    centre_f, centre_m = centres
    rigid: Any
    if search is None:
        rigid = _euler(centre_f, np.eye(3), centre_m - centre_f)
        init = ("moments", 0.0)
    else:
        coarse_fixed, coarse_moving, rotations, keep = search
        tic = time.process_time()
        rigid, name, total = _coarse_search(
            coarse_fixed,
            coarse_moving,
            centres,
            rotations,
            keep,
            threads,
            _label(moving),
            scale=dof != 6,
        )
        angle = _rotation_angle_deg(np.asarray(rigid.GetMatrix()).reshape(3, 3))
        init = (name, angle)
        stages.append("search")
        logger.debug("%s: search, %.2f s CPU", _label(moving), time.process_time() - tic)

    similarity = sitk.Similarity3DTransform()
    similarity.SetCenter(rigid.GetCenter())
    similarity.SetMatrix(rigid.GetMatrix())
    similarity.SetTranslation(rigid.GetTranslation())
    coarse = max(len(shrink) - 1, 1)
    if dof in (9, 12):
        _, n = run_stage(similarity, "similarity", coarse)
        total += n
        stages.append("similarity")
    final: Any
    if dof == 6:
        final = sitk.Euler3DTransform()
        final.SetCenter(similarity.GetCenter())
        final.SetMatrix(_nearest_rotation(similarity.GetMatrix()))  # scale is 1 here
        final.SetTranslation(similarity.GetTranslation())
        name = "rigid"
    elif dof == 7:
        final, name = similarity, "similarity"
    elif dof == 9:
        final = sitk.ScaleVersor3DTransform()
        final.SetCenter(similarity.GetCenter())
        final.SetRotation(similarity.GetVersor())
        final.SetScale([similarity.GetScale()] * 3)
        final.SetTranslation(similarity.GetTranslation())
        name = "scale-versor"
    else:
        final = sitk.AffineTransform(3)
        final.SetCenter(similarity.GetCenter())
        final.SetMatrix(similarity.GetMatrix())
        final.SetTranslation(similarity.GetTranslation())
        name = "affine"
    value, n = run_stage(final, name, len(shrink))
    total += n
    stages.append(name)

    lps = _sitk_matrix(final)
    return lps, value, total, stages, init


def _with_sitk_threads(threads: int, func, *args):
    """Run ``func(*args)`` with SimpleITK's global default thread count set to ``threads``."""

    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    try:
        return func(*args)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def to_working_grid(
    scan: Volume, atlas: Atlas, alignment: AffineAlignment, order: int = 1
) -> Volume:
    """Resample a scan (native grid) onto ``atlas.image``'s grid through ``alignment``.

    Atlas voxel ``v`` takes the scan's value at scan world point
    ``alignment.matrix @ atlas.affine @ v``. ``order`` 0 for masks/labels, 1 for images.
    """
    return resample(scan, atlas.image.shape, atlas.image.affine, alignment.matrix, order=order)


def to_native(
    volume_on_grid: Volume, native: Volume, alignment: AffineAlignment, order: int = 1
) -> Volume:
    """Resample a volume on the atlas working grid back onto the scan's native grid.

    Native voxel ``v`` takes the value at atlas world point
    ``inv(alignment.matrix) @ native.affine @ v``: the inverse of :func:`to_working_grid`.
    The result keeps ``native.source_affine`` so a writer restores the scan's voxel order.
    """
    out = resample(
        volume_on_grid, native.shape, native.affine, alignment.inverse().matrix, order=order
    )
    return Volume(
        out.array,
        native.affine,
        name=volume_on_grid.name,
        source_affine=native.source_affine,
        meta=dict(volume_on_grid.meta),
    )


# --------------------------------------------------------------------------- pipeline
PREPARE_ALIGNMENT: Mapping[str, Any] = MappingProxyType(
    {
        "resolution_mm": 3.0,
        "shrink_factors": (4, 2, 1),
        "smoothing_sigmas": (4.0, 2.0, 1.0),
        "sampling_percentage": 0.2,
        "iterations": 100,
        "search_degrees": 30.0,
        "search_resolution_mm": 6.0,
        "search_keep": 2,
    }
)
"""The :func:`affine_align` settings :func:`prepare_scan` uses (``benchmarks/alignment.py``)."""


@dataclass(frozen=True)
class PreparedScan:
    """A scan ready for GIRNet, with everything needed to go back to its native grid.

    Attributes
    ----------
    native : Volume
        The scan on its native grid (canonical RAS voxel order, original values).
    native_mask : Volume
        Brain mask (bool) on the native grid.
    alignment : AffineAlignment
        Atlas world -> scan world (RAS mm).
    image : Volume
        Scan on the atlas working grid: float32 in [0, 1], 0 outside ``mask``.
    mask : Volume
        Brain mask (bool) on the atlas working grid (nearest-neighbour resampling).
    alignment_ok : bool
        False when the alignment's brain-mask Dice (``alignment.quality``) is below
        :data:`ALIGNMENT_MIN_QUALITY`: the affine alignment probably failed (wrong orientation
        labels, a partial field of view, not a brain); a warning was logged.
    warnings : tuple of str
        One-line messages about this scan's preparation, for reports (empty when all is well).
    """

    native: Volume
    native_mask: Volume
    alignment: AffineAlignment
    image: Volume
    mask: Volume
    alignment_ok: bool = True
    warnings: tuple[str, ...] = ()

    def to_native(self, volume_on_grid: Volume, order: int = 1) -> Volume:
        """:func:`to_native` of a volume on the working grid, onto this scan's native grid."""
        return to_native(volume_on_grid, self.native, self.alignment, order=order)


def prepare_scan(
    scan: Volume, atlas: Atlas, *, seed: int = 0, mask: Volume | None = None
) -> PreparedScan:
    """Brain mask, intensity normalisation, affine alignment and resampling onto the working grid.

    Steps: :func:`brain_mask` (unless ``mask`` is given) -> :func:`normalize_intensity` inside
    the mask (0.5 / 99.5 percentiles) -> :func:`affine_align` (12 DOF, settings
    :data:`PREPARE_ALIGNMENT`: coarse rotation search at 6 mm, then the pyramid 12 / 6 / 3 mm)
    to the full (uncropped) 1 mm atlas -> linear resampling of the normalised image and nearest
    resampling of the mask onto ``atlas``'s grid; the image is then set to 0 outside the
    resampled mask. A poor alignment (:attr:`AffineAlignment.ok` False) logs a warning and sets
    :attr:`PreparedScan.alignment_ok`.

    Parameters
    ----------
    scan : Volume
        Skull-stripped T1 scan, any orientation and field of view (reoriented to canonical RAS
        first; no resampling).
    atlas : Atlas
        Target working grid (:func:`~napari_girnet.data.atlas.load_atlas`).
    seed : int
        Seed of the alignment's metric sampling.
    mask : Volume or None
        Brain mask on ``scan``'s grid; computed with :func:`brain_mask` when ``None``.

    Returns
    -------
    PreparedScan

    Raises
    ------
    PreprocessError
        If the brain mask is empty, the scan is constant, or the alignment fails.
    """
    native = scan.canonical()
    if mask is None:
        native_mask = brain_mask(native)
    else:
        _check_same_grid(scan, mask)
        native_mask = mask.canonical()
        native_mask = native_mask.with_array(np.asarray(native_mask.array).astype(bool))
    normalised = normalize_intensity(native, native_mask)
    full = load_atlas_full()
    alignment = affine_align(
        normalised,
        full.image,
        moving_mask=native_mask,
        fixed_mask=full.mask,
        seed=seed,
        **PREPARE_ALIGNMENT,
    )
    warnings: tuple[str, ...] = ()
    if not alignment.ok:
        message = (
            f"{_label(scan)}: poor affine alignment to the atlas (brain-mask Dice "
            f"{alignment.quality:.2f} < {ALIGNMENT_MIN_QUALITY}): check the orientation labels "
            "of the header and that the scan is a whole skull-stripped brain"
        )
        logger.warning(message)
        warnings = (message,)
    grid_mask = to_working_grid(native_mask, atlas, alignment, order=0)
    image = to_working_grid(normalised, atlas, alignment, order=1)
    image_array = np.clip(image.array, 0.0, 1.0)
    image_array[~grid_mask.array] = 0.0
    return PreparedScan(
        native=native,
        native_mask=native_mask,
        alignment=alignment,
        image=image.with_array(image_array),
        mask=grid_mask,
        alignment_ok=alignment.ok,
        warnings=warnings,
    )
