"""Displacement fields between a scan's native grid and the atlas, through the affine alignment.

GIRNet works on the atlas working grid after an affine alignment of the scan. Its fields ``phi_ts``
/ ``phi_st`` (displacements in voxels of the working grid, ``docs/conventions.md``) describe only
the non-linear part. These functions compose them with the alignment to obtain the full mapping
between the scan's *native* world coordinates and the atlas world (MNI, RAS mm), as exported to
users and to ITK/ANTs tools.

Notation: ``A`` = ``alignment.matrix`` maps atlas world -> scan world (RAS mm). ``W`` = working
grid affine (atlas world), ``N`` = native scan grid affine.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .volume import Volume

__all__ = [
    "atlas_to_scan_field",
    "atlas_to_scan_fields",
    "sample_field",
    "scan_to_atlas_field",
    "world_points",
]


def world_points(grid: Volume) -> np.ndarray:
    """World RAS mm coordinates of every voxel of ``grid``: ``(3, X, Y, Z)``."""
    idx = np.indices(grid.shape, dtype=np.float64).reshape(3, -1)
    world = grid.affine[:3, :3] @ idx + grid.affine[:3, 3:4]
    return world.reshape(3, *grid.shape)


def sample_field(field: np.ndarray, points_vox: np.ndarray, order: int = 1) -> np.ndarray:
    """Sample a ``(3, X, Y, Z)`` field at fractional voxel points ``(3, ...)`` (nearest outside)."""
    flat = points_vox.reshape(3, -1)
    out = np.stack(
        [
            ndi.map_coordinates(np.asarray(c, np.float64), flat, order=order, mode="nearest")
            for c in field
        ]
    )
    return out.reshape(3, *points_vox.shape[1:])


def atlas_to_scan_field(
    phi_ts: np.ndarray,
    working: Volume,
    native: Volume,
    matrix: np.ndarray,
    include_affine: bool = True,
) -> np.ndarray:
    """Full mapping from the scan's native grid to atlas world, as a displacement in mm.

    For native voxel ``p`` at scan world ``x = N p``: working-grid voxel
    ``q = W^-1 A^-1 x``, atlas voxel ``q + phi_ts(q)``, atlas world ``y = W (q + phi_ts(q))``;
    the result is ``y - x`` (RAS mm). This is the pull-back that resamples the atlas onto the
    scan (ITK: a displacement field on the scan grid, ``T(x) = x + d(x)``).

    Parameters
    ----------
    phi_ts : numpy.ndarray
        ``(3, *working.shape)`` displacement in voxels of the working grid, defined on the
        scan side.
    working : Volume
        Working grid (atlas space).
    native : Volume
        The scan's native grid (canonical RAS).
    matrix : numpy.ndarray
        4x4 atlas world -> scan world (``AffineAlignment.matrix``).
    include_affine : bool
        ``True``: the full mapping (what ITK/ANTs need). ``False``: only GIRNet's non-linear
        part, expressed in the scan's world: ``A y - x`` (the atlas point carried back to the scan
        by the affine alignment), zero where GIRNet does not deform — for display.

    Returns
    -------
    numpy.ndarray
        ``(3, *native.shape)`` float32, RAS mm.
    """
    full, nonlinear = atlas_to_scan_fields(phi_ts, working, native, matrix)
    return full if include_affine else nonlinear


def atlas_to_scan_fields(
    phi_ts: np.ndarray, working: Volume, native: Volume, matrix: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Both :func:`atlas_to_scan_field` variants (full, non-linear) from one sampling of phi."""
    x = world_points(native)
    inv = np.linalg.inv(working.affine) @ np.linalg.inv(matrix)
    q = np.einsum("ij,j...->i...", inv[:3, :3], x) + inv[:3, 3].reshape(3, 1, 1, 1)
    atlas_vox = q + sample_field(phi_ts, q)
    del q
    w = working.affine
    y = np.einsum("ij,j...->i...", w[:3, :3], atlas_vox) + w[:3, 3].reshape(3, 1, 1, 1)
    full = (y - x).astype(np.float32)
    back = np.einsum("ij,j...->i...", matrix[:3, :3], y) + matrix[:3, 3].reshape(3, 1, 1, 1)
    return full, (back - x).astype(np.float32)


def scan_to_atlas_field(phi_st: np.ndarray, working: Volume, matrix: np.ndarray) -> np.ndarray:
    """Full mapping from the atlas working grid to the scan's native world, in mm.

    ``phi_st`` is GIRNet's displacement in working-grid voxels. For working voxel ``q`` (atlas
    world ``W q``): scan-side working voxel ``q + phi_st(q)``,
    scan world ``x = A W (q + phi_st(q))``; the result is ``x - W q`` (RAS mm), the pull-back
    that resamples the scan onto the atlas (ITK: a displacement field on the atlas grid).

    Returns
    -------
    numpy.ndarray
        ``(3, *working.shape)`` float32, RAS mm.
    """
    idx = np.indices(working.shape, dtype=np.float64)
    y = world_points(working)
    scan_vox = idx + np.asarray(phi_st, np.float64)
    m = matrix @ working.affine
    x = np.einsum("ij,j...->i...", m[:3, :3], scan_vox) + m[:3, 3].reshape(3, 1, 1, 1)
    return (x - y).astype(np.float32)
