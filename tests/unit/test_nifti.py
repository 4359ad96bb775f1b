"""Tests for napari_girnet.data.nifti: volume I/O, robustness to damaged files, displacements."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from napari_girnet.data import nifti
from napari_girnet.data.nifti import (
    NiftiError,
    mm_to_voxel_displacement,
    read_displacement,
    read_nifti,
    voxel_to_mm_displacement,
    write_displacement,
    write_nifti,
)
from napari_girnet.data.volume import Volume, VolumeError

SHAPE = (9, 8, 7)
MARKER = (7, 1, 5)  # near a corner, so any flipped axis moves it
MARKER_VALUE = 250
LPS_FLIP = np.array([-1.0, -1.0, 1.0])


def _affine(code: str) -> np.ndarray:
    """Anisotropic affine with a non-zero origin whose axes run as ``code`` says."""
    signs = {"RAS": (1, 1, 1), "LAS": (-1, 1, 1), "LPS": (-1, -1, 1)}[code]
    aff = np.diag([1.2 * signs[0], 0.9 * signs[1], 2.0 * signs[2], 1.0])
    aff[:3, 3] = [10.5, -20.25, 30.0]
    return aff


def _marker_array(dtype: np.dtype | type = np.int16) -> np.ndarray:
    arr = (np.arange(np.prod(SHAPE)) % 240).reshape(SHAPE).astype(dtype)
    arr[MARKER] = MARKER_VALUE
    return arr


def _save(arr: np.ndarray, affine: np.ndarray, path: Path, **header: object) -> Path:
    """Write a file with nibabel directly (independent of the code under test)."""
    img = nib.Nifti1Image(arr, affine, dtype=arr.dtype)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units(xyz=header.pop("units", "mm"))
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, path)
    return path


# ----------------------------------------------------------------------------- volumes
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("code", ["RAS", "LAS", "LPS"])
def test_round_trip_restores_file_and_canonicalises(tmp_path: Path, code: str, suffix: str):
    arr = _marker_array()
    aff = _affine(code)
    src = _save(arr, aff, tmp_path / f"in_{code}{suffix}")

    vol = read_nifti(src)
    assert vol.is_canonical
    assert vol.array.dtype == np.int16
    file_aff = nib.load(src).affine  # aff rounded to the header's float32
    np.testing.assert_array_equal(vol.source_affine, file_aff)
    np.testing.assert_allclose(vol.source_affine, aff, atol=1e-6)
    assert vol.meta["axcodes"] == tuple(code)
    assert vol.meta["path"] == str(src)
    assert vol.name == str(src)
    # every voxel keeps its world position
    ijk = np.argwhere(np.ones(SHAPE, bool))
    can_ijk = np.rint(vol.world_to_voxel(nib.affines.apply_affine(file_aff, ijk))).astype(int)
    np.testing.assert_array_equal(vol.array[tuple(can_ijk.T)], arr[tuple(ijk.T)])
    marker_world = nib.affines.apply_affine(file_aff, MARKER)
    np.testing.assert_allclose(
        vol.voxel_to_world(np.argwhere(vol.array == MARKER_VALUE))[0], marker_world, atol=1e-9
    )

    out = write_nifti(vol, tmp_path / "sub" / f"out{suffix}")
    assert out == tmp_path / "sub" / f"out{suffix}"
    back = nib.load(out)
    np.testing.assert_array_equal(back.affine, file_aff)
    np.testing.assert_array_equal(np.asarray(back.dataobj), arr)
    assert back.get_data_dtype() == np.int16
    assert back.header.get_xyzt_units()[0] == "mm"
    assert int(back.header["sform_code"]) == 1 and int(back.header["qform_code"]) == 1


def test_read_not_canonical_keeps_file_order(tmp_path: Path) -> None:
    arr = _marker_array()
    src = _save(arr, _affine("LPS"), tmp_path / "a.nii.gz")
    vol = read_nifti(src, canonical=False, name="t1")
    assert vol.name == "t1"
    assert vol.axcodes == ("L", "P", "S")
    np.testing.assert_array_equal(vol.array, arr)
    np.testing.assert_array_equal(vol.source_affine, nib.load(src).affine)


def test_write_without_restoring_orientation(tmp_path: Path) -> None:
    src = _save(_marker_array(), _affine("LPS"), tmp_path / "a.nii")
    vol = read_nifti(src)
    out = write_nifti(vol, tmp_path / "ras.nii", restore_orientation=False)
    back = nib.load(out)
    assert nib.aff2axcodes(back.affine) == ("R", "A", "S")
    np.testing.assert_array_equal(np.asarray(back.dataobj), vol.array)


def test_written_file_agrees_with_simpleitk(tmp_path: Path) -> None:
    """ITK sees every voxel at the physical (LPS) point our affine says."""
    vol = read_nifti(_save(_marker_array(), _affine("LAS"), tmp_path / "a.nii.gz"))
    out = write_nifti(vol, tmp_path / "b.nii.gz")
    img = sitk.ReadImage(str(out))
    file_vol = read_nifti(out, canonical=False)
    for ijk in [(0, 0, 0), MARKER, (8, 7, 6), (3, 4, 2)]:
        p_lps = np.array(img.TransformIndexToPhysicalPoint(ijk))
        np.testing.assert_allclose(p_lps * LPS_FLIP, file_vol.voxel_to_world(ijk)[0], atol=1e-4)
        assert img[ijk] == file_vol.array[ijk]


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64])
def test_dtype_preserved(tmp_path: Path, dtype: type) -> None:
    arr = _marker_array(dtype)
    vol = read_nifti(_save(arr, _affine("RAS"), tmp_path / "a.nii.gz"))
    assert vol.array.dtype == dtype
    assert vol.meta["dtype"] == str(np.dtype(dtype))
    back = read_nifti(write_nifti(vol, tmp_path / "b.nii.gz"))
    assert back.array.dtype == dtype
    np.testing.assert_array_equal(back.array, vol.array)


def test_dtype_argument_and_special_types(tmp_path: Path) -> None:
    src = _save(_marker_array(), _affine("RAS"), tmp_path / "a.nii")
    assert read_nifti(src, dtype=np.float32).array.dtype == np.float32
    grid = Volume(np.zeros(SHAPE, bool), _affine("LAS"))
    mask = grid.with_array(_marker_array() > 100)
    assert nib.load(write_nifti(mask, tmp_path / "m.nii.gz")).get_data_dtype() == np.uint8
    labels = grid.with_array(_marker_array(np.int64))
    img = nib.load(write_nifti(labels, tmp_path / "l.nii.gz"))
    assert img.get_data_dtype() == np.int32
    np.testing.assert_array_equal(np.asarray(img.dataobj), _marker_array())
    half = grid.with_array(_marker_array(np.float16))
    assert nib.load(write_nifti(half, tmp_path / "h.nii")).get_data_dtype() == np.float32
    forced = write_nifti(labels, tmp_path / "f.nii", dtype=np.float32)
    assert nib.load(forced).get_data_dtype() == np.float32
    with pytest.raises(VolumeError, match="unsupported voxel type complex64"):
        grid.with_array(np.zeros(SHAPE, np.complex64))  # refused before it reaches a writer
    with pytest.raises(NiftiError, match=r"c\.nii"):
        write_nifti(labels, tmp_path / "c.nii", dtype=np.complex64)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_scaling_applied_like_nibabel(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"s{suffix}"
    img = nib.Nifti1Image(_marker_array(), _affine("RAS"), dtype=np.int16)
    img.header.set_slope_inter(2.0, 1.5)
    nib.save(img, path)
    vol = read_nifti(path, canonical=False)
    expected = np.asarray(nib.load(path).dataobj)
    assert vol.array.dtype == expected.dtype
    np.testing.assert_array_equal(vol.array, expected)
    np.testing.assert_array_equal(vol.array, _marker_array() * 2.0 + 1.5)


def test_big_endian_file_read_in_native_order(tmp_path: Path) -> None:
    path = tmp_path / "be.nii.gz"
    hdr = nib.Nifti1Header(endianness=">")
    nib.save(nib.Nifti1Image(_marker_array(np.float32), _affine("RAS"), header=hdr), path)
    vol = read_nifti(path)
    assert vol.array.dtype.isnative
    np.testing.assert_array_equal(vol.array, _marker_array(np.float32))


@pytest.mark.parametrize(("units", "factor"), [("meter", 1000.0), ("micron", 1e-3)])
def test_spatial_units_converted_to_mm(tmp_path: Path, units: str, factor: float) -> None:
    aff_mm = _affine("LAS")
    aff_file = aff_mm.copy()
    aff_file[:3] /= factor
    vol = read_nifti(_save(_marker_array(), aff_file, tmp_path / "u.nii", units=units))
    assert vol.meta["xyzt_units"] == units
    np.testing.assert_allclose(vol.source_affine, aff_mm, rtol=1e-6)
    np.testing.assert_allclose(vol.spacing, [1.2, 0.9, 2.0], rtol=1e-6)
    back = nib.load(write_nifti(vol, tmp_path / "mm.nii"))
    assert back.header.get_xyzt_units()[0] == "mm"
    np.testing.assert_allclose(back.affine, aff_mm, rtol=1e-6)


def test_unknown_units_assumed_mm_with_warning(tmp_path: Path, caplog) -> None:
    src = _save(_marker_array(), _affine("RAS"), tmp_path / "u.nii", units="unknown")
    with caplog.at_level(logging.WARNING, logger="napari_girnet.data.nifti"):
        vol = read_nifti(src)
    np.testing.assert_allclose(vol.affine, _affine("RAS"))
    assert any("assuming millimetres" in r.getMessage() for r in caplog.records)


def test_trailing_singleton_dims_squeezed(tmp_path: Path) -> None:
    arr = _marker_array()[..., None]
    vol = read_nifti(_save(arr, _affine("RAS"), tmp_path / "x1.nii.gz"))
    assert vol.shape == SHAPE
    assert vol.meta["shape_on_disk"] == (*SHAPE, 1)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((*SHAPE, 4), r"expected a 3D image, got 4D data with shape \(9, 8, 7, 4\): pick one"),
        ((*SHAPE, 3), r"got 4D data .*read_displacement"),
        ((9, 8), r"expected a 3D image, got 2D data"),
        ((*SHAPE, 1, 3), r"got 5D data .*read_displacement"),
        ((*SHAPE, 2, 2), r"got 5D data"),
    ],
)
def test_non_3d_rejected(tmp_path: Path, shape: tuple[int, ...], match: str) -> None:
    path = _save(np.zeros(shape, np.float32), np.eye(4), tmp_path / "bad_dims.nii.gz")
    with pytest.raises(NiftiError, match=match) as info:
        read_nifti(path)
    assert str(path) in str(info.value)


def test_nan_voxels_rejected_and_counted(tmp_path: Path) -> None:
    arr = _marker_array(np.float32)
    arr[0, 0, 0] = np.nan
    arr[1, 1, 1] = np.inf
    arr[2, 2, 2] = np.nan
    path = _save(arr, _affine("RAS"), tmp_path / "nan.nii.gz")
    with pytest.raises(NiftiError, match=r"nan\.nii\.gz: contains 3 NaN or infinite"):
        read_nifti(path)


def test_singular_affine_rejected(tmp_path: Path) -> None:
    path = tmp_path / "sing.nii"
    img = nib.Nifti1Image(_marker_array(), np.eye(4))
    img.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=1)
    nib.save(img, path)
    with pytest.raises(NiftiError, match=r"sing\.nii: .*singular"):
        read_nifti(path)


def test_missing_and_misnamed_files(tmp_path: Path) -> None:
    with pytest.raises(NiftiError, match=r"nope\.nii\.gz: file not found"):
        read_nifti(tmp_path / "nope.nii.gz")
    with pytest.raises(NiftiError, match="not a regular file"):
        read_nifti(tmp_path)
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(NiftiError, match=r"notes\.txt: not a NIfTI file name"):
        read_nifti(txt)
    fake = tmp_path / "fake.nii"
    fake.write_text("this is not an image\n" * 40)
    with pytest.raises(NiftiError, match=r"fake\.nii: not a readable NIfTI") as info:
        read_nifti(fake)
    assert isinstance(info.value, VolumeError) and isinstance(info.value, ValueError)
    gz_named_nii = tmp_path / "zipped.nii"
    gz_named_nii.write_bytes(gzip.compress(b"x" * 400))
    with pytest.raises(NiftiError, match=r"zipped\.nii: .*rename it to \.nii\.gz"):
        read_nifti(gz_named_nii)
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    with pytest.raises(NiftiError, match=r"empty\.nii\.gz: file is empty"):
        read_nifti(empty)


def test_bad_output_paths(tmp_path: Path) -> None:
    vol = Volume(_marker_array(), np.eye(4))
    with pytest.raises(NiftiError, match=r"out\.png: output must end in \.nii or \.nii\.gz"):
        write_nifti(vol, tmp_path / "out.png")
    (tmp_path / "dir.nii").mkdir()
    with pytest.raises(NiftiError, match="is a directory"):
        write_nifti(vol, tmp_path / "dir.nii")


def test_nifti2_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "two.nii.gz"
    aff = _affine("LPS")
    img = nib.Nifti2Image(_marker_array(np.float32), aff)
    img.set_sform(aff, code=2)
    nib.save(img, src)
    vol = read_nifti(src)
    assert vol.meta["nifti_version"] == 2 and vol.meta["sform_code"] == 2
    back = nib.load(write_nifti(vol, tmp_path / "out.nii.gz"))
    assert isinstance(back, nib.Nifti2Image)
    assert int(back.header["sform_code"]) == 2
    np.testing.assert_array_equal(back.affine, aff)
    np.testing.assert_array_equal(np.asarray(back.dataobj), _marker_array(np.float32))


def test_missing_xforms_warn(tmp_path: Path, caplog) -> None:
    path = tmp_path / "noxform.nii"
    img = nib.Nifti1Image(_marker_array(), np.eye(4))
    img.set_sform(None, code=0)
    img.set_qform(None, code=0)
    nib.save(img, path)
    with caplog.at_level(logging.WARNING, logger="napari_girnet.data.nifti"):
        read_nifti(path)
    assert any("neither qform nor sform" in r.getMessage() for r in caplog.records)


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.nii.gz"
    vol = Volume(_marker_array(), _affine("LAS"))
    write_nifti(vol, target)
    before = target.read_bytes()

    def broken_to_stream(self, io_obj, **kwargs):
        io_obj.write(b"partial data")
        raise RuntimeError("disk went away")

    monkeypatch.setattr(nib.Nifti1Image, "to_stream", broken_to_stream)
    with pytest.raises(RuntimeError, match="disk went away"):
        write_nifti(vol.with_array(vol.array * 2), target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


def test_write_is_deterministic(tmp_path: Path) -> None:
    vol = Volume(_marker_array(np.float32), _affine("LPS"))
    a = write_nifti(vol, tmp_path / "a.nii.gz").read_bytes()
    b = write_nifti(vol, tmp_path / "b.nii.gz").read_bytes()
    assert a == b
    assert gzip.decompress(a)[:4] == (348).to_bytes(4, "little")


def test_header_declaring_huge_data_is_rejected_without_allocating(tmp_path: Path) -> None:
    for suffix in (".nii", ".nii.gz"):
        path = _save(_marker_array(), _affine("RAS"), tmp_path / f"huge{suffix}")
        img = nib.load(path)
        raw = bytearray(img.header.binaryblock)
        raw[42:48] = np.array([30000, 30000, 30000], "<i2").tobytes()  # dim[1:4]
        data = gzip.decompress(path.read_bytes()) if suffix == ".nii.gz" else path.read_bytes()
        blob = bytes(raw) + data[348:]
        path.write_bytes(gzip.compress(blob) if suffix == ".nii.gz" else blob)
        with pytest.raises(NiftiError, match=r"huge\.nii.*(truncated|cannot hold)"):
            read_nifti(path)


# ----------------------------------------------------------------------------- fuzzing
@pytest.fixture(scope="module")
def good_gz(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    rng = np.random.default_rng(7)
    arr = rng.normal(size=(12, 11, 10)).astype(np.float32)
    path = tmp_path_factory.mktemp("fuzz") / "good.nii.gz"
    write_nifti(Volume(arr, _affine("LPS")), path)
    return path.read_bytes()


def _expect_nifti_error(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        read_nifti(path)
    except NiftiError as exc:
        assert path.name in str(exc)
    else:
        pytest.fail(f"damaged file was read without error ({len(data)} bytes)")


def test_fuzz_truncated_gzip(tmp_path: Path, good_gz: bytes) -> None:
    path = tmp_path / "cut.nii.gz"
    n = len(good_gz)
    for cut in [0, 1, 5, 10, 20, 100, 200, n // 4, n // 2, n - 100, n - 9, n - 4, n - 1]:
        _expect_nifti_error(path, good_gz[:cut])


def test_fuzz_corrupted_gzip_stream(tmp_path: Path, good_gz: bytes) -> None:
    path = tmp_path / "flip.nii.gz"
    rng = np.random.default_rng(11)
    for pos in [*rng.integers(40, len(good_gz) - 40, size=12), 0, 1, 3, len(good_gz) - 6]:
        data = bytearray(good_gz)
        data[pos] ^= 0xFF
        _expect_nifti_error(path, bytes(data))
    # gzip trailer (CRC-32, length) damaged: nibabel alone would not notice
    for pos in range(len(good_gz) - 8, len(good_gz)):
        data = bytearray(good_gz)
        data[pos] ^= 0x5A
        _expect_nifti_error(path, bytes(data))


@pytest.mark.parametrize(
    ("offset", "value", "what"),
    [
        (344, b"n+2\x00", "NIfTI-2 magic in a NIfTI-1 header"),
        (344, b"xx1\x00", "magic"),
        (40, b"\x09\x00", "dim[0] > 7"),
        (40, b"\x02\x00", "dim[0] = 2"),
        (42, b"\x00\x7f", "huge dim[1]"),
        (46, b"\x00\x00", "dim[3] = 0"),
        (70, b"\x99\x99", "datatype code"),
        (108, b"\x00\x00\x80\x7f", "vox_offset inf"),
    ],
)
def test_fuzz_corrupted_header_fields(
    tmp_path: Path, good_gz: bytes, offset: int, value: bytes, what: str
) -> None:
    raw = bytearray(gzip.decompress(good_gz))
    raw[offset : offset + len(value)] = value
    _expect_nifti_error(tmp_path / "hdr.nii.gz", gzip.compress(bytes(raw)))
    _expect_nifti_error(tmp_path / "hdr.nii", bytes(raw))


def test_fuzz_random_header_bytes_never_escape(tmp_path: Path, good_gz: bytes) -> None:
    """Random header damage either still gives a valid volume or raises NiftiError."""
    rng = np.random.default_rng(3)
    raw = gzip.decompress(good_gz)
    n_errors = 0
    for variant in range(60):
        data = bytearray(raw)
        for _ in range(1 + variant % 6):
            data[int(rng.integers(0, 352))] = int(rng.integers(0, 256))
        suffix = ".nii.gz" if variant % 2 else ".nii"
        path = tmp_path / f"rnd{suffix}"
        path.write_bytes(gzip.compress(bytes(data)) if suffix == ".nii.gz" else bytes(data))
        try:
            vol = read_nifti(path)
        except NiftiError as exc:
            assert path.name in str(exc)
            n_errors += 1
        else:
            assert vol.array.ndim == 3 and vol.is_canonical
    assert n_errors > 0


def test_fuzz_random_bytes_and_empty(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    for n, size in enumerate([0, 1, 347, 348, 352, 2000, 20000]):
        blob = rng.integers(0, 256, size=size, dtype=np.uint8).tobytes()
        _expect_nifti_error(tmp_path / f"r{n}.nii", blob)
        _expect_nifti_error(tmp_path / f"r{n}.nii.gz", blob)
        _expect_nifti_error(tmp_path / f"z{n}.nii.gz", gzip.compress(blob))


def test_fuzz_damaged_displacement_fields(tmp_path: Path) -> None:
    grid = _grid("LAS")
    good = write_displacement(tmp_path / "good.nii.gz", _field(SHAPE), grid).read_bytes()
    path = tmp_path / "bad.nii.gz"
    rng = np.random.default_rng(9)
    for cut in [0, 10, 300, len(good) // 2, len(good) - 3]:
        path.write_bytes(good[:cut])
        with pytest.raises(NiftiError, match=r"bad\.nii\.gz"):
            read_displacement(path)
    for pos in rng.integers(40, len(good) - 40, size=6):
        data = bytearray(good)
        data[pos] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.raises(NiftiError, match=r"bad\.nii\.gz"):
            read_displacement(path)


# ----------------------------------------------------------------------------- displacements
def _grid(code: str, shape: tuple[int, int, int] = SHAPE) -> Volume:
    """Canonical grid whose source file had orientation ``code``."""
    return Volume(np.zeros(shape, np.float32), _affine(code)).canonical()


def _field(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=1.5, size=(3, *shape)).astype(np.float32)


def test_mm_voxel_displacement_helpers() -> None:
    aff = np.eye(4)
    aff[:3, :3] = np.array([[0.0, 1.0, 0.2], [-2.0, 0.0, 0.0], [0.0, 0.3, 1.5]])
    disp = _field((4, 3, 2))
    mm = voxel_to_mm_displacement(disp, aff)
    assert mm.shape == disp.shape and mm.dtype == np.float32
    np.testing.assert_allclose(mm[:, 1, 2, 0], aff[:3, :3] @ disp[:, 1, 2, 0], rtol=1e-6)
    np.testing.assert_allclose(mm_to_voxel_displacement(mm, aff), disp, atol=1e-5)
    np.testing.assert_array_equal(
        voxel_to_mm_displacement(disp, np.diag([2.0, 1.0, 1.0, 1.0]))[0], 2 * disp[0]
    )
    with pytest.raises(ValueError, match=r"shape \(3, \.\.\.\)"):
        voxel_to_mm_displacement(np.zeros((2, 4, 4)), aff)
    with pytest.raises(ValueError, match="singular"):
        mm_to_voxel_displacement(disp, np.diag([1.0, 0.0, 1.0, 1.0]))


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_voxel_convention_round_trip(tmp_path: Path, suffix: str) -> None:
    grid = _grid("LPS")
    disp = _field(grid.shape)
    path = write_displacement(tmp_path / f"d{suffix}", disp, grid, convention="voxel")
    img = nib.load(path)
    assert img.shape == (*grid.shape, 3)
    assert int(img.header["intent_code"]) == 1006
    assert img.header["intent_name"].item() == b"girnet-vox"
    np.testing.assert_allclose(img.affine, grid.affine, atol=1e-6)  # not restored
    back, back_grid = read_displacement(path)
    assert back.dtype == np.float32 and back.shape == disp.shape
    np.testing.assert_array_equal(back, disp)
    assert back_grid.same_grid(grid, atol=1e-6)
    assert back_grid.is_canonical
    assert back_grid.meta["convention"] == "voxel"


def test_voxel_convention_on_non_canonical_grid_is_converted(tmp_path: Path) -> None:
    """A voxel field on an LPS grid comes back on the RAS grid, same physical mapping."""
    file_grid = Volume(np.zeros(SHAPE, np.float32), _affine("LPS"))
    disp = _field(SHAPE, seed=2)
    path = write_displacement(tmp_path / "d.nii.gz", disp, file_grid, convention="voxel")
    back, grid = read_displacement(path)
    assert grid.is_canonical
    for ijk in [(0, 0, 0), MARKER, (8, 7, 6), (2, 5, 3)]:
        expected = file_grid.voxel_to_world(np.add(ijk, disp[(slice(None), *ijk)]))[0]
        c = tuple(np.rint(grid.world_to_voxel(file_grid.voxel_to_world(ijk))[0]).astype(int))
        got = grid.voxel_to_world(np.add(c, back[(slice(None), *c)]))[0]
        np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("restore", [True, False])
@pytest.mark.parametrize("code", ["LAS", "LPS"])
def test_itk_convention_matches_simpleitk(tmp_path: Path, code: str, restore: bool) -> None:
    """SimpleITK maps voxel-centre points exactly where our voxel-space mapping says."""
    grid = _grid(code)
    disp = _field(grid.shape, seed=4)
    path = write_displacement(tmp_path / "itk.nii.gz", disp, grid, restore_orientation=restore)
    hdr = nib.load(path).header
    assert hdr.get_data_shape() == (*grid.shape, 1, 3)
    assert int(hdr["intent_code"]) == 1007
    assert hdr.get_data_dtype() == np.float32
    expected_codes = tuple(code) if restore else ("R", "A", "S")
    assert nib.aff2axcodes(nib.load(path).affine) == expected_codes

    field = sitk.ReadImage(str(path), sitk.sitkVectorFloat64)
    assert field.GetNumberOfComponentsPerPixel() == 3
    transform = sitk.DisplacementFieldTransform(field)
    for ijk in [(0, 0, 0), (3, 2, 1), (8, 7, 6), (1, 6, 4), (5, 0, 2)]:
        start = grid.voxel_to_world(ijk)[0]
        end = grid.voxel_to_world(np.add(ijk, disp[(slice(None), *ijk)]))[0]
        got_lps = np.array(transform.TransformPoint(tuple(start * LPS_FLIP)))
        np.testing.assert_allclose(got_lps * LPS_FLIP, end, atol=1e-3)

    back, back_grid = read_displacement(path)
    assert back_grid.same_grid(grid, atol=1e-5)
    assert back_grid.meta["convention"] == "itk"
    np.testing.assert_allclose(back, disp, atol=1e-5)


def test_read_displacement_rejects_other_files(tmp_path: Path) -> None:
    image = _save(_marker_array(np.float32), np.eye(4), tmp_path / "img.nii.gz")
    with pytest.raises(NiftiError, match=r"img\.nii\.gz: not a 3-vector displacement field"):
        read_displacement(image)
    anon = _save(np.zeros((*SHAPE, 3), np.float32), np.eye(4), tmp_path / "anon.nii.gz")
    with pytest.raises(NiftiError, match=r"anon\.nii\.gz: 4D .*girnet-vox"):
        read_displacement(anon)
    five = _save(np.zeros((*SHAPE, 1, 3), np.float32), np.eye(4), tmp_path / "five.nii")
    with pytest.raises(NiftiError, match=r"five\.nii: 5D .*intent code 0"):
        read_displacement(five)
    grid = _grid("RAS")
    path = write_displacement(tmp_path / "nan.nii", _field(SHAPE), grid, convention="voxel")
    img = nib.load(path)
    data = np.asarray(img.dataobj).copy()
    data[1, 1, 1, 0] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine, header=img.header), path)
    with pytest.raises(NiftiError, match=r"nan\.nii: contains 1 NaN"):
        read_displacement(path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(NiftiError, match=r"nan\.nii: file is truncated"):
        read_displacement(path)


def test_write_displacement_validates(tmp_path: Path) -> None:
    grid = _grid("RAS")
    with pytest.raises(NiftiError, match=r"d\.nii: displacement must have shape \(3, 9, 8, 7\)"):
        write_displacement(tmp_path / "d.nii", np.zeros((3, 2, 2, 2)), grid)
    bad = _field(SHAPE)
    bad[0, 0, 0, 0] = np.inf
    with pytest.raises(NiftiError, match="1 NaN or infinite"):
        write_displacement(tmp_path / "d.nii", bad, grid)
    with pytest.raises(NiftiError, match="unknown displacement convention 'ras'"):
        write_displacement(tmp_path / "d.nii", _field(SHAPE), grid, convention="ras")
    assert not (tmp_path / "d.nii").exists()


def test_module_public_api() -> None:
    assert set(nifti.__all__) >= {
        "NiftiError",
        "read_nifti",
        "write_nifti",
        "read_displacement",
        "write_displacement",
        "voxel_to_mm_displacement",
        "mm_to_voxel_displacement",
    }
    assert issubclass(NiftiError, VolumeError)
