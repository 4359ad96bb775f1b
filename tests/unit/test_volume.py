"""Tests for napari_girnet.data.volume.Volume: orientation handling, geometry and validation."""

from __future__ import annotations

import numpy as np
import pytest

from napari_girnet.data.volume import Volume, VolumeError

SHAPE = (6, 5, 4)  # (R, A, S) extents of the reference RAS array
# Anisotropic spacing and a non-zero origin so that axis mix-ups change world positions.
A_RAS = np.array(
    [
        [1.5, 0.0, 0.0, -10.0],
        [0.0, 2.0, 0.0, 20.0],
        [0.0, 0.0, 2.5, 5.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _ras_array() -> np.ndarray:
    """Asymmetric RAS array: unique values everywhere and a marker near one corner."""
    arr = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    arr[4, 1, 3] = 1000.0
    return arr


def _las(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Same anatomy with axis 0 running to the Left: arr_las[i] = arr[X-1-i]."""
    nx = arr.shape[0]
    flip = np.array([[-1, 0, 0, nx - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    return arr[::-1].copy(), A_RAS @ flip


def _lps(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Same anatomy with axes 0, 1 flipped (ITK / DICOM order)."""
    nx, ny = arr.shape[:2]
    flip = np.array([[-1, 0, 0, nx - 1], [0, -1, 0, ny - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    return arr[::-1, ::-1].copy(), A_RAS @ flip


def _psr(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Same anatomy with permuted axes (P, S, R): arr_psr[a, b, c] = arr[c, Y-1-a, b]."""
    ny = arr.shape[1]
    out = arr[:, ::-1, :].transpose(1, 2, 0).copy()
    m = np.array([[0, 0, 1, 0], [-1, 0, 0, ny - 1], [0, 1, 0, 0], [0, 0, 0, 1]], float)
    return out, A_RAS @ m


ORIENTED = {"LAS": _las, "LPS": _lps, "PSR": _psr}


def _marker_world(vol: Volume, value: float = 1000.0) -> np.ndarray:
    idx = np.argwhere(vol.array == value)
    assert idx.shape == (1, 3)
    return vol.voxel_to_world(idx)[0]


@pytest.mark.parametrize("code", sorted(ORIENTED))
def test_oriented_copies_really_are_oriented(code: str) -> None:
    arr, aff = ORIENTED[code](_ras_array())
    vol = Volume(arr, aff)
    assert "".join(vol.axcodes) == code
    assert not vol.is_canonical
    # Every voxel of the oriented copy sits where the same value sits in the RAS reference.
    ref = Volume(_ras_array(), A_RAS)
    ijk = np.argwhere(np.ones(arr.shape, bool))
    ref_ijk = np.rint(ref.world_to_voxel(vol.voxel_to_world(ijk))).astype(int)
    np.testing.assert_array_equal(arr[tuple(ijk.T)], ref.array[tuple(ref_ijk.T)])


@pytest.mark.parametrize("code", sorted(ORIENTED))
def test_canonical_puts_same_anatomy_at_same_world_position(code: str) -> None:
    ref = _ras_array()
    arr, aff = ORIENTED[code](ref)
    vol = Volume(arr, aff, name=code)
    can = vol.canonical()
    assert can.is_canonical
    assert can.axcodes == ("R", "A", "S")
    np.testing.assert_array_equal(can.array, ref)
    np.testing.assert_allclose(can.affine, A_RAS, atol=1e-12)
    np.testing.assert_array_equal(can.source_affine, aff)
    np.testing.assert_allclose(_marker_world(can), _marker_world(vol), atol=1e-9)
    np.testing.assert_allclose(_marker_world(can), (A_RAS @ [4, 1, 3, 1])[:3])
    assert can.array.flags.c_contiguous
    assert can.name == code


@pytest.mark.parametrize("code", sorted(ORIENTED))
def test_reoriented_like_restores_source_order(code: str) -> None:
    arr, aff = ORIENTED[code](_ras_array())
    can = Volume(arr, aff).canonical()
    back = can.reoriented_like(can.source_affine)
    np.testing.assert_array_equal(back.array, arr)
    np.testing.assert_allclose(back.affine, aff, atol=1e-12)


def test_canonical_keeps_existing_source_affine() -> None:
    arr, aff = _lps(_ras_array())
    can = Volume(arr, aff).canonical()
    again = can.canonical()
    np.testing.assert_array_equal(again.source_affine, aff)
    np.testing.assert_array_equal(again.array, can.array)


def test_world_voxel_round_trip_oblique() -> None:
    rng = np.random.default_rng(0)
    theta = np.deg2rad(12.0)
    rot = np.array(
        [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]
    )
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.9, 1.1, 3.0])
    aff[:3, 3] = [12.0, -7.5, 40.0]
    vol = Volume(np.zeros(SHAPE, np.uint8), aff)
    ijk = rng.uniform(-2, 8, size=(20, 3))
    xyz = vol.voxel_to_world(ijk)
    np.testing.assert_allclose(vol.world_to_voxel(xyz), ijk, atol=1e-10)
    np.testing.assert_allclose(xyz, (aff[:3, :3] @ ijk.T).T + aff[:3, 3], atol=1e-10)
    # single point in, (1, 3) out
    assert vol.voxel_to_world([1, 2, 3]).shape == (1, 3)
    assert vol.obliquity_deg == pytest.approx(12.0, abs=1e-6)


def test_geometry_properties() -> None:
    vol = Volume(_ras_array(), A_RAS, name="ref")
    assert vol.shape == SHAPE
    np.testing.assert_allclose(vol.spacing, [1.5, 2.0, 2.5])
    assert vol.is_canonical
    assert vol.same_grid(Volume(np.zeros(SHAPE), A_RAS))
    assert not vol.same_grid(Volume(np.zeros(SHAPE), A_RAS + np.diag([0, 0, 0.1, 0])))
    assert not vol.same_grid(Volume(np.zeros((6, 5, 3)), A_RAS))
    assert "ref" in repr(vol) and "RAS" in repr(vol)


def test_with_array_keeps_grid_and_checks_shape() -> None:
    arr, aff = _lps(_ras_array())
    can = Volume(arr, aff).canonical()
    mask = can.with_array(can.array > 10, name="mask")
    assert mask.name == "mask"
    assert mask.array.dtype == bool
    np.testing.assert_array_equal(mask.affine, can.affine)
    np.testing.assert_array_equal(mask.source_affine, aff)
    with pytest.raises(VolumeError, match=r"does not match grid shape"):
        can.with_array(np.zeros((2, 2, 2)))


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((4, 4)), "expected a 3D volume, got 2D"),
        (np.zeros((4, 4, 4, 2)), "expected a 3D volume, got 4D"),
        (np.zeros((4, 0, 4)), "empty"),
    ],
)
def test_bad_arrays_rejected(array: np.ndarray, match: str) -> None:
    with pytest.raises(VolumeError, match=match) as info:
        Volume(array, np.eye(4), name="scan.nii.gz")
    assert "scan.nii.gz" in str(info.value)


@pytest.mark.parametrize(
    ("affine", "match"),
    [
        (np.diag([1.0, 0.0, 1.0, 1.0]), "singular"),
        (np.full((4, 4), np.nan), "NaN or infinite"),
        (np.eye(3), "4x4"),
        (np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], float), "last row"),
    ],
)
def test_bad_affines_rejected(affine: np.ndarray, match: str) -> None:
    with pytest.raises(VolumeError, match=match) as info:
        Volume(np.zeros((3, 3, 3)), affine, name="layer-x")
    assert "layer-x" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_bad_source_affine_rejected() -> None:
    with pytest.raises(VolumeError, match="singular"):
        Volume(np.zeros((3, 3, 3)), np.eye(4), source_affine=np.diag([1.0, 1.0, 0.0, 1.0]))


def test_check_finite() -> None:
    arr = np.ones((3, 3, 3), np.float32)
    vol = Volume(arr, np.eye(4), name="t1")
    assert vol.check_finite() is vol
    arr2 = arr.copy()
    arr2[0, 0, 0] = np.nan
    arr2[1, 2, 0] = np.inf
    with pytest.raises(VolumeError, match=r"t1: contains 2 NaN or infinite voxels"):
        Volume(arr2, np.eye(4), name="t1").check_finite()
    ints = Volume(np.ones((3, 3, 3), np.int16), np.eye(4))
    assert ints.check_finite() is ints
