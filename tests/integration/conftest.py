"""Shared fixtures for the napari integration tests: tiny NIfTI files and landmark CSVs.

All volumes show the same small, deliberately asymmetric "anatomy": a smooth intensity ramp
with a bright cubic marker (3 voxels wide) near the right-posterior-inferior corner, on an
anisotropic grid (2 x 1.5 x 3 mm) with a non-zero origin. The same anatomy is written in three
voxel orders (RAS, LAS, LPS), so a correct reader places the marker at the same world position
whatever the file's orientation.

Fixtures
--------
``tiny_anatomy``
    :class:`TinyAnatomy`: canonical RAS array/affine, marker voxel, value and world position.
``reorient_array``
    The function :func:`reorient` ``(array, affine, "LPS") -> (array, affine)``.
``write_nifti_file``
    Factory ``(array, affine, name, dtype=None, intent_code=None) -> Path`` writing any array
    (nibabel, sform and qform set, mm units) into ``tmp_path``.
``nifti_triplet``
    ``dict`` orientation code -> path for ``"RAS"``, ``"LAS"`` and ``"LPS"`` float32 files of
    the same anatomy.
``tiny_scan_path``
    The RAS float32 scan (``scan_RAS.nii.gz``).
``tiny_labels_path``
    A uint8 label map (0 background, 1 marker, 2 a slab) on the same grid, stored LAS.
``landmark_csvs``
    :class:`LandmarkFiles`: the same three landmarks as ``id,x,y,z`` (RAS mm) and
    ``Landmark,X,Y,Z`` (BraTS-Reg, LPS mm), with their RAS coordinates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations as ornt

SHAPE = (10, 12, 8)
SPACING = (2.0, 1.5, 3.0)
ORIGIN = (-9.0, -21.0, 4.5)
MARKER_IJK = (2, 3, 1)  # centre of the 3x3x3 marker cube, RAS voxel indices
MARKER_VALUE = 100.0


@dataclass(frozen=True)
class TinyAnatomy:
    """The test anatomy in canonical RAS voxel order.

    Attributes
    ----------
    array : numpy.ndarray
        ``(10, 12, 8)`` float32, axes R, A, S.
    affine : numpy.ndarray
        4x4 RAS affine (diagonal spacing 2, 1.5, 3 mm).
    marker_ijk : tuple of int
        RAS voxel index of the marker centre.
    marker_world : numpy.ndarray
        ``(3,)`` RAS mm of the marker centre.
    marker_value : float
        Intensity of the marker voxels (no other voxel has it).
    """

    array: np.ndarray
    affine: np.ndarray
    marker_ijk: tuple[int, int, int]
    marker_world: np.ndarray
    marker_value: float = MARKER_VALUE

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]


@dataclass(frozen=True)
class LandmarkFiles:
    """Landmark CSVs of the same points in both formats."""

    ras: Path
    brats: Path
    ids: tuple[str, ...]
    world_ras: np.ndarray


def make_tiny_anatomy() -> TinyAnatomy:
    """Build the RAS test anatomy (pure numpy, deterministic)."""
    i, j, k = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    array = (10.0 + 2.0 * i + 1.0 * j + 0.5 * k).astype(np.float32)
    ci, cj, ck = MARKER_IJK
    array[ci - 1 : ci + 2, cj - 1 : cj + 2, ck - 1 : ck + 2] = MARKER_VALUE
    affine = np.eye(4)
    affine[:3, :3] = np.diag(SPACING)
    affine[:3, 3] = ORIGIN
    world = affine[:3, :3] @ np.asarray(MARKER_IJK, dtype=np.float64) + affine[:3, 3]
    return TinyAnatomy(array, affine, MARKER_IJK, world)


def reorient(array: np.ndarray, affine: np.ndarray, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """The same image in another voxel order (flips/permutation only), e.g. ``"LPS"``."""
    transform = ornt.ornt_transform(ornt.io_orientation(affine), ornt.axcodes2ornt(tuple(axcodes)))
    out = ornt.apply_orientation(array, transform)
    out_affine = affine @ ornt.inv_ornt_aff(transform, array.shape)
    return np.ascontiguousarray(out), out_affine


@pytest.fixture
def tiny_anatomy() -> TinyAnatomy:
    return make_tiny_anatomy()


@pytest.fixture
def reorient_array() -> Callable[[np.ndarray, np.ndarray, str], tuple[np.ndarray, np.ndarray]]:
    return reorient


@pytest.fixture
def write_nifti_file(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing ``array`` with ``affine`` to ``tmp_path / name`` (plain nibabel)."""

    def write(
        array: np.ndarray,
        affine: np.ndarray,
        name: str,
        dtype: np.dtype | type | None = None,
        intent_code: int | None = None,
    ) -> Path:
        data = np.asarray(array if dtype is None else np.asarray(array).astype(dtype))
        img = nib.Nifti1Image(data, affine)
        img.set_sform(affine, code=1)
        img.set_qform(affine, code=1)
        img.header.set_xyzt_units(xyz="mm")
        if intent_code is not None:
            img.header.set_intent(intent_code)
        path = tmp_path / name
        nib.save(img, path)
        return path

    return write


@pytest.fixture
def nifti_triplet(
    tiny_anatomy: TinyAnatomy, write_nifti_file: Callable[..., Path]
) -> dict[str, Path]:
    paths = {}
    for code in ("RAS", "LAS", "LPS"):
        array, affine = reorient(tiny_anatomy.array, tiny_anatomy.affine, code)
        assert "".join(nib.aff2axcodes(affine)) == code
        paths[code] = write_nifti_file(array, affine, f"scan_{code}.nii.gz")
    return paths


@pytest.fixture
def tiny_scan_path(nifti_triplet: dict[str, Path]) -> Path:
    return nifti_triplet["RAS"]


@pytest.fixture
def tiny_labels_path(tiny_anatomy: TinyAnatomy, write_nifti_file: Callable[..., Path]) -> Path:
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[tiny_anatomy.array == MARKER_VALUE] = 1
    labels[6:9, :, 5:7] = 2
    array, affine = reorient(labels, tiny_anatomy.affine, "LAS")
    return write_nifti_file(array, affine, "labels_LAS.nii.gz", dtype=np.uint8)


@pytest.fixture
def landmark_csvs(tmp_path: Path, tiny_anatomy: TinyAnatomy) -> LandmarkFiles:
    ids = ("1", "2", "10")
    world = np.array(
        [tiny_anatomy.marker_world, [0.5, -3.25, 12.0], [-7.0, -12.5, 16.5]], dtype=np.float64
    )
    ras = tmp_path / "landmarks_ras.csv"
    rows = list(zip(ids, world.tolist(), strict=True))
    ras.write_text("id,x,y,z\n" + "".join(f"{i},{x!r},{y!r},{z!r}\n" for i, (x, y, z) in rows))
    brats = tmp_path / "landmarks_brats.csv"
    brats.write_text(
        "Landmark,X,Y,Z\n" + "".join(f"{i},{-x!r},{-y!r},{z!r}\n" for i, (x, y, z) in rows)
    )
    return LandmarkFiles(ras, brats, ids, world)
