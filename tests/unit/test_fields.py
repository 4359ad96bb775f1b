"""Composition of GIRNet's working-grid fields with the affine alignment (data.fields)."""

from __future__ import annotations

import numpy as np

from napari_girnet.data.fields import atlas_to_scan_field, scan_to_atlas_field
from napari_girnet.data.volume import Volume


def _grids():
    working = Volume(
        np.zeros((10, 12, 8)),
        np.diag([2.0, 2.0, 2.0, 1.0])
        + np.array([[0, 0, 0, -10], [0, 0, 0, -12], [0, 0, 0, -8], [0, 0, 0, 0.0]]),
    )
    native_aff = np.array([[-1.5, 0, 0, 20], [0, 1.5, 0, -15], [0, 0, 3.0, -9], [0, 0, 0, 1]])
    native = Volume(np.zeros((20, 16, 6)), native_aff)  # LAS, anisotropic
    # atlas world -> scan world: a rotation about z by 10 degrees and a shift
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    matrix = np.array([[c, -s, 0, 3.0], [s, c, 0, -2.0], [0, 0, 1.1, 1.0], [0, 0, 0, 1]])
    return working, native.canonical(), matrix


def test_identity_nonlinear_part_leaves_only_the_affine():
    working, native, matrix = _grids()
    zero = np.zeros((3, *working.shape), np.float32)
    full = atlas_to_scan_field(zero, working, native, matrix)
    nl = atlas_to_scan_field(zero, working, native, matrix, include_affine=False)
    np.testing.assert_allclose(nl, 0.0, atol=1e-4)
    # full mapping of a native point = the inverse affine applied to it
    p = np.array([3, 5, 2])
    x = native.voxel_to_world(p)[0]
    expect = (np.linalg.inv(matrix) @ np.append(x, 1.0))[:3]
    np.testing.assert_allclose(x + full[(slice(None), *p)], expect, atol=1e-4)


def test_constant_working_shift_is_seen_in_both_directions():
    working, native, matrix = _grids()
    phi = np.zeros((3, *working.shape), np.float32)
    phi[0] = 1.0  # one working voxel = 2 mm along atlas R
    nl = atlas_to_scan_field(phi, working, native, matrix, include_affine=False)
    centre = tuple(s // 2 for s in native.shape)
    # carried back to the scan by the affine: 2 mm along the rotated axis, length 2 mm
    np.testing.assert_allclose(np.linalg.norm(nl[(slice(None), *centre)]), 2.0, atol=1e-4)
    back = scan_to_atlas_field(phi, working, matrix)
    q = (4, 5, 3)
    y = working.voxel_to_world(np.array(q))[0]
    x = (matrix @ np.append(working.voxel_to_world(np.add(q, (1, 0, 0)))[0], 1.0))[:3]
    np.testing.assert_allclose(y + back[(slice(None), *q)], x, atol=1e-4)
