"""A 3D image with its voxel-to-world affine.

Every volume in napari-girnet is a :class:`Volume`: a numpy array in **canonical RAS voxel
order** (axis 0 runs to the patient's Right, axis 1 to Anterior, axis 2 to Superior) and a
4x4 voxel-to-world affine in millimetres (RAS+ world, as in NIfTI/nibabel). Readers
reorient to canonical RAS with nibabel; the orientation of the source file is kept in
``source_affine`` so that writers can restore it exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

__all__ = [
    "MIN_BRAIN_EXTENT_MM",
    "MIN_BRAIN_VOXELS",
    "Volume",
    "VolumeError",
    "check_brain_size",
    "describe_grid_mismatch",
]

MIN_BRAIN_EXTENT_MM = 60.0
"""Smallest extent (mm) of the non-background part of a scan, along every voxel axis, that
:func:`check_brain_size` accepts. An adult brain spans about 140 x 170 x 120 mm (R-L x A-P x S-I)
and a newborn's about 90 mm; anything under 60 mm along an axis is not a whole brain."""
MIN_BRAIN_VOXELS = 16
"""Fewest voxels along every axis that :func:`check_brain_size` accepts (the coarsest clinical
scans have about 25 slices of 5-6 mm)."""


class VolumeError(ValueError):
    """Raised for a volume that cannot be used: wrong dimensionality, NaN, bad affine, ..."""


def _check_affine(affine: np.ndarray, name: str) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise VolumeError(f"{name}: affine must be 4x4, got shape {affine.shape}")
    if not np.all(np.isfinite(affine)):
        raise VolumeError(f"{name}: affine contains NaN or infinite values")
    if not np.allclose(affine[3], [0, 0, 0, 1]):
        raise VolumeError(f"{name}: affine's last row must be [0, 0, 0, 1], got {affine[3]}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise VolumeError(f"{name}: affine is singular (zero voxel size or collapsed axes)")
    return affine


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D array on a grid with a voxel-to-world affine.

    Parameters
    ----------
    array : numpy.ndarray
        Voxel values, shape ``(X, Y, Z)``, indexed ``array[i, j, k]``. After
        :meth:`canonical` the axes are R, A, S.
    affine : numpy.ndarray
        4x4 voxel-to-world transform; world coordinates are RAS+ millimetres
        (``world = affine @ [i, j, k, 1]``).
    name : str
        Human-readable origin (file path or layer name) used in error messages.
    source_affine : numpy.ndarray or None
        Affine of the file this volume was read from, before reorientation to canonical RAS.
        Writers use it to restore the original voxel order.
    meta : Mapping
        Free metadata (header fields, provenance).

    Raises
    ------
    VolumeError
        If the array is not 3D, is empty, is not of a real numeric type (complex, object,
        string or structured arrays are refused), or the affine is not a finite invertible 4x4
        matrix.
    """

    array: np.ndarray
    affine: np.ndarray
    name: str = ""
    source_affine: np.ndarray | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        label = self.name or "volume"
        arr = np.asarray(self.array)
        if arr.ndim != 3:
            raise VolumeError(
                f"{label}: expected a 3D volume, got {arr.ndim}D with shape {arr.shape}"
            )
        if arr.size == 0:
            raise VolumeError(f"{label}: volume is empty (shape {arr.shape})")
        if arr.dtype.fields is not None or arr.dtype.kind not in "biuf":
            hint = "; take np.abs() or the real part first" if arr.dtype.kind == "c" else ""
            raise VolumeError(
                f"{label}: unsupported voxel type {arr.dtype} (expected real numbers: integer, "
                f"float or bool){hint}"
            )
        object.__setattr__(self, "array", arr)
        object.__setattr__(self, "affine", _check_affine(self.affine, label))
        if self.source_affine is not None:
            object.__setattr__(self, "source_affine", _check_affine(self.source_affine, label))

    # ------------------------------------------------------------------ geometry
    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape ``(X, Y, Z)`` in voxels."""
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along each array axis, shape ``(3,)``."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    @property
    def axcodes(self) -> tuple[str, str, str]:
        """Anatomical direction of each array axis, e.g. ``('R', 'A', 'S')``."""
        return tuple(nib.aff2axcodes(self.affine))

    @property
    def is_canonical(self) -> bool:
        """True when the axes run R, A, S (affine may still be slightly oblique)."""
        return self.axcodes == ("R", "A", "S")

    @property
    def obliquity_deg(self) -> float:
        """Largest angle (degrees) between a voxel axis and its nearest world axis."""
        return float(np.degrees(np.max(np.abs(nib.affines.obliquity(self.affine)))))

    def voxel_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """Map voxel coordinates ``(N, 3)`` (fractional allowed) to RAS world mm ``(N, 3)``."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
        return nib.affines.apply_affine(self.affine, ijk)

    def world_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        """Map RAS world mm ``(N, 3)`` to fractional voxel coordinates ``(N, 3)``."""
        xyz = np.atleast_2d(np.asarray(xyz, dtype=np.float64))
        return nib.affines.apply_affine(np.linalg.inv(self.affine), xyz)

    def same_grid(self, other: Volume, atol: float = 1e-4) -> bool:
        """True when ``other`` has the same shape and affine (within ``atol`` mm)."""
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=atol)

    # ------------------------------------------------------------------ derived volumes
    def with_array(self, array: np.ndarray, name: str | None = None) -> Volume:
        """A volume on the same grid (same affine and source orientation) holding ``array``.

        Raises
        ------
        VolumeError
            If ``array`` does not have this volume's shape.
        """
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise VolumeError(
                f"{name or self.name or 'volume'}: array shape {array.shape} does not match "
                f"grid shape {self.array.shape}"
            )
        return replace(self, array=array, name=self.name if name is None else name)

    def canonical(self) -> Volume:
        """Return this volume reoriented to RAS voxel order (a permutation/flip, no resampling).

        The original affine is kept in ``source_affine`` (unless one is already recorded).
        """
        current = ornt.io_orientation(self.affine)
        target = ornt.axcodes2ornt(("R", "A", "S"))
        transform = ornt.ornt_transform(current, target)
        array = ornt.apply_orientation(self.array, transform)
        affine = self.affine @ ornt.inv_ornt_aff(transform, self.array.shape)
        src = self.source_affine if self.source_affine is not None else self.affine
        return replace(self, array=np.ascontiguousarray(array), affine=affine, source_affine=src)

    def reoriented_like(self, target_affine: np.ndarray) -> Volume:
        """Return this volume permuted/flipped to the axis orientation of ``target_affine``.

        Used by writers to restore the source file's voxel order. No resampling happens;
        the world position of every voxel is unchanged.
        """
        current = ornt.io_orientation(self.affine)
        target = ornt.io_orientation(np.asarray(target_affine, dtype=np.float64))
        transform = ornt.ornt_transform(current, target)
        array = ornt.apply_orientation(self.array, transform)
        affine = self.affine @ ornt.inv_ornt_aff(transform, self.array.shape)
        return replace(self, array=np.ascontiguousarray(array), affine=affine)

    def check_finite(self) -> Volume:
        """Return self, or raise :class:`VolumeError` naming the volume if it holds NaN/inf."""
        if np.issubdtype(self.array.dtype, np.floating) and not np.all(np.isfinite(self.array)):
            n_bad = int(np.size(self.array) - np.count_nonzero(np.isfinite(self.array)))
            raise VolumeError(f"{self.name or 'volume'}: contains {n_bad} NaN or infinite voxels")
        return self

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:.3g}" for s in self.spacing)
        return (
            f"Volume(name={self.name!r}, shape={self.shape}, spacing=({sp}) mm, "
            f"axcodes={''.join(self.axcodes)}, dtype={self.array.dtype})"
        )


def _fmt(values: Any, unit: str = "") -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")" + unit


def describe_grid_mismatch(volume: Volume, reference: Volume, atol: float = 1e-4) -> str | None:
    """One line saying how ``volume``'s grid differs from ``reference``'s, or None if it does not.

    Both volumes are compared as given (use :meth:`Volume.canonical` on both first to ignore a
    mere difference of voxel order). Reported, when they differ: the shape (voxels), the voxel
    size (mm), the orientation codes, the rotation between the voxel axes (degrees) and the
    shift of the first voxel's centre (world RAS mm, ``volume`` minus ``reference``).

    Parameters
    ----------
    volume, reference : Volume
        Grids to compare; their ``name`` s appear in the message.
    atol : float
        Tolerance in mm on the affines, as in :meth:`Volume.same_grid`.
    """
    if volume.same_grid(reference, atol=atol):
        return None
    parts = []
    if volume.shape != reference.shape:
        parts.append(f"shape {volume.shape} vs {reference.shape}")
    if not np.allclose(volume.spacing, reference.spacing, atol=atol):
        parts.append(f"voxel size {_fmt(volume.spacing)} vs {_fmt(reference.spacing)} mm")
    if volume.axcodes != reference.axcodes:
        parts.append(f"orientation {''.join(volume.axcodes)} vs {''.join(reference.axcodes)}")
    else:
        rot_a = volume.affine[:3, :3] / volume.spacing
        rot_b = reference.affine[:3, :3] / reference.spacing
        cos = np.clip((np.trace(rot_a.T @ rot_b) - 1.0) / 2.0, -1.0, 1.0)
        angle = float(np.degrees(np.arccos(cos)))
        if angle > 1e-3:
            parts.append(f"axes rotated by {angle:.3g} deg")
    shift = volume.affine[:3, 3] - reference.affine[:3, 3]
    if np.any(np.abs(shift) > atol):
        parts.append(f"origin shifted by {_fmt(shift)} mm")
    if not parts:  # differences below the tolerance of each part but not of the whole affine
        diff = float(np.max(np.abs(volume.affine - reference.affine)))
        parts.append(f"affines differ by up to {diff:.3g}")
    a = volume.name or "volume"
    b = reference.name or "reference"
    return f"{a}: grid does not match {b}: " + "; ".join(parts)


def check_brain_size(
    volume: Volume,
    min_extent_mm: float = MIN_BRAIN_EXTENT_MM,
    min_voxels: int = MIN_BRAIN_VOXELS,
) -> Volume:
    """Return ``volume``, or raise :class:`VolumeError` if it cannot hold a whole brain.

    Checks, along every voxel axis: at least ``min_voxels`` voxels, and a non-background extent
    (the bounding box of the voxels that differ from the minimum value, e.g. the zero background
    of a skull-stripped scan, times the voxel size) of at least ``min_extent_mm`` mm. A constant
    image is refused too. Meant to run before any work on a scan that is to be registered to the
    atlas; the defaults are :data:`MIN_BRAIN_EXTENT_MM` and :data:`MIN_BRAIN_VOXELS`.

    Raises
    ------
    VolumeError
        With a one-line message naming the volume, the axis and the measured size.
    """
    label = volume.name or "volume"
    arr = np.asarray(volume.array)
    if min(volume.shape) < min_voxels:
        raise VolumeError(
            f"{label}: {'x'.join(map(str, volume.shape))} voxels is too small to hold a brain "
            f"(at least {min_voxels} voxels along every axis are needed)"
        )
    foreground = arr != arr.min()
    if not foreground.any():
        raise VolumeError(f"{label}: the image is constant (value {arr.flat[0]}); no brain in it")
    extent = np.empty(3)
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(foreground.any(axis=other))
        extent[axis] = (idx[-1] - idx[0] + 1) * volume.spacing[axis]
    small = int(np.argmin(extent))
    if extent[small] < min_extent_mm:
        raise VolumeError(
            f"{label}: the image content spans only {_fmt(extent, ' mm')} along its voxel axes "
            f"(axis {small} {extent[small]:.0f} mm); a whole brain needs at least "
            f"{min_extent_mm:.0f} mm along every axis"
        )
    return volume
