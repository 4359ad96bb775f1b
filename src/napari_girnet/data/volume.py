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

__all__ = ["Volume", "VolumeError"]


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
        If the array is not 3D, is empty, or the affine is not a finite invertible 4x4 matrix.
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
        return tuple(nib.aff2axcodes(self.affine))  # type: ignore[return-value]

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
