"""Tests for napari_girnet.data.landmarks: CSV formats, LPS/RAS handling, voxel mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_girnet.data.landmarks import (
    LandmarkError,
    Landmarks,
    natural_key,
    pair_landmarks,
    read_landmarks,
    write_landmarks,
)
from napari_girnet.data.volume import Volume

LPS_FLIP = np.array([-1.0, -1.0, 1.0])


def _lms(n: int = 5, seed: int = 0) -> Landmarks:
    rng = np.random.default_rng(seed)
    world = rng.uniform(-120, 120, size=(n, 3)) + rng.uniform(0, 1e-7, size=(n, 3))
    return Landmarks(tuple(str(i + 1) for i in range(n)), world)


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("fmt", ["ras", "brats"])
def test_round_trip_is_exact(tmp_path: Path, fmt: str) -> None:
    lms = _lms(12)
    path = write_landmarks(lms, tmp_path / "sub" / f"lm_{fmt}.csv", fmt=fmt)
    assert path.exists()
    for read_fmt in ("auto", fmt):
        back = read_landmarks(path, fmt=read_fmt)
        assert back.ids == lms.ids
        np.testing.assert_array_equal(back.world, lms.world)


def test_written_files_use_the_documented_headers_and_signs(tmp_path: Path) -> None:
    lms = Landmarks(("a", "b"), np.array([[1.5, -2.0, 3.25], [0.0, 4.0, -5.0]]))
    ras = write_landmarks(lms, tmp_path / "r.csv").read_text().splitlines()
    assert ras == ["id,x,y,z", "a,1.5,-2.0,3.25", "b,0.0,4.0,-5.0"]
    brats = write_landmarks(lms, tmp_path / "b.csv", fmt="brats").read_text().splitlines()
    assert brats == ["Landmark,X,Y,Z", "a,-1.5,2.0,3.25", "b,0.0,-4.0,-5.0"]


def test_brats_csv_is_lps_converted_to_ras(tmp_path: Path) -> None:
    path = tmp_path / "brats.csv"
    path.write_text("Landmark,X,Y,Z\n1,133,-104,52\n2,70.5,-180.25,80\n")
    lms = read_landmarks(path)
    np.testing.assert_array_equal(lms.world, [[-133, 104, 52], [-70.5, 180.25, 80]])


def test_brats_reg_grid_maps_lps_point_to_expected_voxel(tmp_path: Path) -> None:
    """BraTS-Reg: 240x240x155, LPS affine diag(-1,-1,1), RAS translation (0,239,0)."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = 239.0
    vol = Volume(np.zeros((240, 240, 155), np.uint8), affine)
    assert vol.axcodes == ("L", "P", "S")
    points = np.array([[133.0, -104.0, 52.0], [0.0, -239.0, 0.0], [239.0, 0.0, 154.0]])
    path = tmp_path / "lm.csv"
    path.write_text(
        "Landmark,X,Y,Z\n"
        + "".join(f"{i},{x},{y},{z}\n" for i, (x, y, z) in enumerate(points, start=1))
    )
    ijk = read_landmarks(path).to_voxel(vol)
    np.testing.assert_allclose(ijk, points + np.array([0.0, 239.0, 0.0]), atol=1e-12)


def test_same_point_in_both_formats_hits_same_voxel_in_both_orientations(
    tmp_path: Path,
) -> None:
    # an asymmetric LPS volume (anisotropic, shifted) and its RAS-ordered copy
    lps_affine = np.array(
        [[-1.2, 0.0, 0.0, 30.0], [0.0, -0.8, 0.0, 12.0], [0.0, 0.0, 2.0, -40.0], [0, 0, 0, 1]]
    )
    arr = np.arange(10 * 9 * 8, dtype=np.int32).reshape(10, 9, 8)
    marker = (7, 2, 6)
    arr[marker] = -1
    lps_vol = Volume(arr, lps_affine)
    ras_vol = lps_vol.canonical()
    lps_again = ras_vol.reoriented_like(ras_vol.source_affine)
    assert ras_vol.axcodes == ("R", "A", "S") and lps_again.axcodes == ("L", "P", "S")

    world = lps_vol.voxel_to_world(marker)[0]
    lps = world * LPS_FLIP
    (tmp_path / "b.csv").write_text("Landmark,X,Y,Z\nm," + ",".join(map(repr, lps.tolist())))
    (tmp_path / "r.csv").write_text("id,x,y,z\nm," + ",".join(map(repr, world.tolist())))
    from_brats = read_landmarks(tmp_path / "b.csv")
    from_ras = read_landmarks(tmp_path / "r.csv")
    np.testing.assert_allclose(from_brats.world, from_ras.world, atol=1e-12)

    for vol in (lps_again, ras_vol):
        for lms in (from_brats, from_ras):
            ijk = lms.to_voxel(vol)[0]
            np.testing.assert_allclose(ijk, np.rint(ijk), atol=1e-9)
            assert vol.array[tuple(np.rint(ijk).astype(int))] == -1
    np.testing.assert_allclose(from_brats.to_voxel(lps_again)[0], marker, atol=1e-9)
    np.testing.assert_allclose(from_ras.to_voxel(ras_vol)[0], [10 - 1 - 7, 9 - 1 - 2, 6], atol=1e-9)


# ----------------------------------------------------------------------------- parsing
def test_auto_detection_is_case_and_whitespace_tolerant(tmp_path: Path) -> None:
    path = tmp_path / "lm.csv"
    path.write_text("\ufeff  LANDMARK , x ,Y , z ,comment\n\n# a comment\n 3 , 1 , 2 , 3 ,x\n")
    lms = read_landmarks(path)
    assert lms.ids == ("3",)
    np.testing.assert_array_equal(lms.world, [[-1.0, -2.0, 3.0]])
    path.write_text("Id,X,Y,Z\r\nA,1,2,3\r\n")
    np.testing.assert_array_equal(read_landmarks(path).world, [[1.0, 2.0, 3.0]])


def test_explicit_format_overrides_header(tmp_path: Path, caplog) -> None:
    path = tmp_path / "lm.csv"
    path.write_text("Landmark,X,Y,Z\n1,1,2,3\n")
    with caplog.at_level("WARNING"):
        lms = read_landmarks(path, fmt="ras")
    np.testing.assert_array_equal(lms.world, [[1.0, 2.0, 3.0]])
    assert any("fmt='ras'" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", r"file is empty"),
        ("\n\n# only comments\n", r"file is empty"),
        ("id,x,y,z\n", r"no landmarks after the header"),
        ("name,a,b,c\n1,2,3,4\n", r"line 1: unrecognised header .*Landmark,X,Y,Z or id,x,y,z"),
        ("id,x,y\n1,2,3\n", r"line 1: unrecognised header"),
        ("id,x,y,z\n1,2,3,4\n2,5,6\n", r"line 3: expected 4 columns \(id,x,y,z\), got 3"),
        ("id,x,y,z\n1,2,abc,4\n", r"line 2: column y value 'abc' is not a number"),
        ("Landmark,X,Y,Z\n1,2,3,nan\n", r"line 2: column Z value 'nan' is not finite"),
        ("id,x,y,z\n7,1,2,3\n8,1,2,3\n7,4,5,6\n", r"line 4: duplicate landmark id '7'.*line 2"),
        ("id,x,y,z\n ,1,2,3\n", r"line 2: empty landmark id"),
    ],
)
def test_read_errors_name_file_and_line(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad_landmarks.csv"
    path.write_text(text)
    with pytest.raises(LandmarkError, match=match) as info:
        read_landmarks(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_other_read_and_write_errors(tmp_path: Path) -> None:
    with pytest.raises(LandmarkError, match=r"missing\.csv: file not found"):
        read_landmarks(tmp_path / "missing.csv")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(LandmarkError, match=r"bin\.csv: cannot read the file as text"):
        read_landmarks(tmp_path / "bin.csv")
    with pytest.raises(LandmarkError, match=r"unknown landmark format 'lps'"):
        read_landmarks(tmp_path / "bin.csv", fmt="lps")
    with pytest.raises(LandmarkError, match=r"out\.csv: unknown landmark format 'auto'"):
        write_landmarks(_lms(), tmp_path / "out.csv", fmt="auto")
    (tmp_path / "adir").mkdir()
    with pytest.raises(LandmarkError, match=r"adir: cannot write"):
        write_landmarks(_lms(), tmp_path / "adir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "bin.csv"]


# ----------------------------------------------------------------------------- the class
def test_landmarks_validation() -> None:
    with pytest.raises(LandmarkError, match="2 landmark ids but 3 coordinate rows"):
        Landmarks(("a", "b"), np.zeros((3, 3)))
    with pytest.raises(LandmarkError, match=r"shape \(N, 3\)"):
        Landmarks(("a",), np.zeros((1, 2)))
    with pytest.raises(LandmarkError, match="duplicate landmark ids: 2, 10"):
        Landmarks(("10", "2", "10", "2"), np.zeros((4, 3)))
    with pytest.raises(LandmarkError, match="NaN or infinite coordinates: b"):
        Landmarks(("a", "b"), np.array([[0, 0, 0], [0, np.inf, 0]]))
    with pytest.raises(LandmarkError, match="at least one"):
        Landmarks((), np.zeros((0, 3)))
    with pytest.raises(LandmarkError, match="must not be empty"):
        Landmarks(("",), np.zeros((1, 3)))


def test_landmarks_basics() -> None:
    source = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64)
    lms = Landmarks([1, 2], source)  # type: ignore[arg-type]
    assert lms.ids == ("1", "2")
    assert lms.world.dtype == np.float64
    assert len(lms) == 2
    source[0, 0] = 99  # stored as a copy
    assert lms.world[0, 0] == 1.0
    with pytest.raises(ValueError, match="read-only"):
        lms.world[0, 0] = 5.0
    assert "n=2" in repr(lms)
    sub = lms.subset(["2"])
    assert sub.ids == ("2",)
    np.testing.assert_array_equal(sub.world, [[4.0, 5.0, 6.0]])
    with pytest.raises(LandmarkError, match="unknown landmark ids: 7, x"):
        lms.subset(["7", "1", "x"])


def test_voxel_round_trip_oblique() -> None:
    affine = np.array(
        [[0.0, -1.1, 0.1, 50.0], [0.9, 0.0, 0.0, -20.0], [0.0, 0.05, 2.5, 7.0], [0, 0, 0, 1]]
    )
    vol = Volume(np.zeros((5, 6, 7), np.uint8), affine)
    ijk = np.array([[0.0, 0.0, 0.0], [1.5, 2.25, 3.0], [4.0, 5.0, 6.0]])
    lms = Landmarks.from_voxel(("a", "b", "c"), ijk, vol)
    np.testing.assert_allclose(lms.world[1], affine[:3, :3] @ ijk[1] + affine[:3, 3])
    np.testing.assert_allclose(lms.to_voxel(vol), ijk, atol=1e-12)
    with pytest.raises(LandmarkError, match=r"shape \(N, 3\)"):
        Landmarks.from_voxel(("a",), np.zeros(3), vol)


# ----------------------------------------------------------------------------- pairing
def test_natural_key() -> None:
    ids = ["10", "2", "1", "lm11", "lm2", "b", "A"]
    assert sorted(ids, key=natural_key) == ["1", "2", "10", "A", "b", "lm2", "lm11"]


def test_pair_landmarks_sorts_naturally() -> None:
    a = Landmarks(("10", "2", "1"), np.array([[10.0, 0, 0], [2, 0, 0], [1, 0, 0]]))
    b = Landmarks(("1", "10", "2"), np.array([[1.0, 1, 1], [10, 1, 1], [2, 1, 1]]))
    ids, wa, wb = pair_landmarks(a, b)
    assert ids == ("1", "2", "10")
    np.testing.assert_array_equal(wa[:, 0], [1, 2, 10])
    np.testing.assert_array_equal(wb[:, 0], [1, 2, 10])
    assert wa.shape == wb.shape == (3, 3)


def test_pair_landmarks_reports_unmatched_ids() -> None:
    a = Landmarks(("1", "2", "3", "12"), np.zeros((4, 3)))
    b = Landmarks(("2", "3", "4"), np.zeros((3, 3)))
    with pytest.raises(
        LandmarkError,
        match=r"only in the first set: 1, 12; only in the second"
        r" set: 4",
    ):
        pair_landmarks(a, b)
