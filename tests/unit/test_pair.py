"""Pair mode of ``register``: a scan registered onto another scan of the same patient.

The end-to-end checks use the glioma 3 mm fixture as moving scan and the same voxels under a
known rigid header change as fixed scan (no deformation), with the ``test`` preset and no
fine-tuning or instance optimisation: every field must then reproduce the known affine.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_girnet import api
from napari_girnet.cli import main
from napari_girnet.data.fields import atlas_to_scan_fields, sample_field, world_points
from napari_girnet.data.landmarks import LandmarkError, Landmarks, write_landmarks
from napari_girnet.data.nifti import read_nifti, write_nifti
from napari_girnet.data.volume import Volume, VolumeError
from napari_girnet.evaluation.measure import landmark_tre
from napari_girnet.pipeline.pair_result import fixed_to_moving_field, moving_to_fixed_field

DATA = Path(__file__).resolve().parents[1] / "data"
GLIOMA = DATA / "glioma_t1_3mm.nii.gz"


def _rigid(degrees: float, shift: tuple[float, float, float], axes: tuple[int, int]) -> np.ndarray:
    """4x4 rotation about the axis normal to ``axes`` followed by ``shift`` (RAS mm)."""
    t = np.radians(degrees)
    m = np.eye(4)
    i, j = axes
    m[i, i], m[i, j], m[j, i], m[j, j] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
    m[:3, 3] = shift
    return m


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """4x4 ``matrix`` applied to ``(3, ...)`` points."""
    extra = (1,) * (points.ndim - 1)
    return np.einsum("ij,j...->i...", matrix[:3, :3], points) + matrix[:3, 3].reshape(3, *extra)


# The fixed scan: the moving scan's voxels with the world moved by T (fixed p = T x).
T = _rigid(8.0, (5.0, -4.0, 3.0), (0, 1))
T_INV = np.linalg.inv(T)


def _fixed_volume() -> Volume:
    moving = read_nifti(GLIOMA)
    return Volume(np.asarray(moving.array), T @ moving.affine, name="fixed_t1_3mm.nii.gz")


def _brain(volume: Volume) -> np.ndarray:
    arr = np.asarray(volume.array)
    return arr > arr.min()


# ----------------------------------------------------------------------------- composition
def test_fields_compose_the_working_grid_with_both_alignments():
    """Pure composition on synthetic grids: zero and constant GIRNet fields, oblique affines."""
    working = Volume(np.zeros((8, 9, 7), np.float32), np.diag([6.0, 6.0, 6.0, 1.0]))
    fixed_aff = _rigid(20.0, (-30.0, -20.0, -10.0), (1, 2)) @ np.diag([3.0, 3.0, 4.0, 1.0])
    fixed = Volume(np.zeros((12, 11, 9), np.float32), fixed_aff)
    moving = Volume(np.zeros((10, 12, 8), np.float32), np.diag([4.0, 3.5, 5.0, 1.0]))
    a_f = _rigid(-12.0, (3.0, 7.0, -2.0), (0, 2)) @ np.diag([1.1, 0.95, 1.05, 1.0])
    d = _rigid(9.0, (4.0, -6.0, 2.5), (0, 1))  # fixed world -> moving world
    a_m = d @ a_f
    zero = np.zeros((3, *working.shape))

    p = world_points(fixed)
    f2m = fixed_to_moving_field(zero, working, fixed, a_f, a_m)
    np.testing.assert_allclose(f2m, _apply(d, p) - p, atol=1e-3)

    x = world_points(moving)
    a2s, _ = atlas_to_scan_fields(zero, working, moving, a_m)  # moving point -> MNI point
    m2f = moving_to_fixed_field(a2s, moving, a_f)
    np.testing.assert_allclose(m2f, _apply(np.linalg.inv(d), x) - x, atol=1e-3)

    # a constant GIRNet shift c (working voxels) moves every fixed point by A_m W c
    c = np.array([0.5, -1.0, 0.25])
    shifted = fixed_to_moving_field(zero + c.reshape(3, 1, 1, 1), working, fixed, a_f, a_m)
    offset = a_m[:3, :3] @ working.affine[:3, :3] @ c
    np.testing.assert_allclose(
        shifted - f2m, np.broadcast_to(offset.reshape(3, 1, 1, 1), p.shape), atol=1e-3
    )


# ----------------------------------------------------------------------------- end to end
def _landmarks(tmp: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """Fixed landmarks inside the brain and their exact moving counterparts (x = T^-1 p)."""
    fixed = _fixed_volume().canonical()
    idx = np.argwhere(_brain(fixed))
    rows = idx[np.linspace(len(idx) // 5, 4 * len(idx) // 5, 5).astype(int)]
    fixed_mm = fixed.voxel_to_world(rows)
    moving_mm = _apply(T_INV, fixed_mm.T).T
    ids = ("1", "2", "3", "4", "10")
    mov_csv = write_landmarks(Landmarks(ids, moving_mm), tmp / "moving.csv")
    fix_csv = write_landmarks(Landmarks(ids, fixed_mm), tmp / "fixed.csv")
    return mov_csv, fix_csv, moving_mm, fixed_mm


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pair")
    mov_csv, fix_csv, moving_mm, fixed_mm = _landmarks(tmp)
    result = api.register_pair(
        GLIOMA,
        _fixed_volume(),
        config="test",
        fine_tune_steps=0,
        instance_steps=0,
        seed=0,
        landmarks_moving=mov_csv,
        landmarks_fixed=fix_csv,
    )
    paths = result.save(tmp / "out")
    return result, paths, moving_mm, fixed_mm


def test_pair_fields_reproduce_a_known_affine_and_round_trip(pair_run):
    result = pair_run[0]
    fixed = result.fixed
    p = world_points(fixed)
    err = np.linalg.norm(result.field_fixed_to_moving - (_apply(T_INV, p) - p), axis=0)
    inside = _brain(fixed)
    assert err[inside].mean() < 0.5 and np.percentile(err[inside], 99) < 1.0  # 3 mm voxels

    moving = result.moving
    x = world_points(moving)
    err = np.linalg.norm(result.field_moving_to_fixed - (_apply(T, x) - x), axis=0)
    assert err[_brain(moving)].mean() < 0.5 and np.percentile(err[_brain(moving)], 99) < 1.0

    # moving point -> fixed point -> moving point
    pts = x[:, _brain(moving)][:, ::50]
    there = pts + sample_field(result.field_moving_to_fixed, moving.world_to_voxel(pts.T).T)
    back = there + sample_field(result.field_fixed_to_moving, fixed.world_to_voxel(there.T).T)
    assert np.percentile(np.linalg.norm(back - pts, axis=0), 95) < 0.5

    assert result.moved.same_grid(fixed) and result.lesion_mask_on_fixed.same_grid(fixed)
    moved, target = result.moved.array[inside], np.asarray(fixed.array, np.float32)[inside]
    assert np.corrcoef(moved, target)[0, 1] > 0.95
    assert set(np.unique(result.lesion_mask_on_fixed.array)) <= {0, 1}


def test_pair_tre_matches_hand_computed_distances(pair_run):
    result, _paths, moving_mm, fixed_mm = pair_run
    before = result.tre["before"]
    expected = np.linalg.norm(fixed_mm - moving_mm, axis=1)  # the landmarks sit exactly T apart
    np.testing.assert_allclose(
        [before["per_landmark"][i] for i in ("1", "2", "3", "4", "10")], expected, atol=1e-3
    )
    assert before["mean"] == pytest.approx(expected.mean(), abs=1e-3)
    after = result.tre["after"]
    assert after["n"] == 5 and after["mean"] < 0.5 < before["mean"] / 10


def test_pair_report_and_files(pair_run):
    result, paths, _moving_mm, _fixed_mm = pair_run
    out = paths["report"].parent
    report = json.loads(paths["report"].read_text())
    assert report["mode"] == "pair" and report["fixed"] == "fixed_t1_3mm.nii.gz"
    assert report["moving"] == str(GLIOMA)
    direct = np.asarray(report["alignments"]["moving_to_fixed"]["fixed_world_to_moving_world_ras"])
    np.testing.assert_allclose(direct[:3, 3], T_INV[:3, 3], atol=1.0)
    assert "mni_world_to_fixed_world_ras" in report["alignments"]["fixed_to_mni"]
    assert report["tre"]["after"]["mean"] == pytest.approx(result.tre["after"]["mean"])
    assert "map_to_fixed_s" in report["timings_s"] and "lesion" in report["conventions"]
    for name in (
        "moved_on_fixed",
        "inpainted_on_fixed",
        "lesion_mask_on_fixed",
        "jacobian_on_fixed",
        "field_fixed_to_moving",
        "field_moving_to_fixed",
        "lesion_mask",
        "field_atlas_to_scan",
    ):
        assert (out / f"{name}.nii.gz").is_file(), name
        assert f"{name}.nii.gz" in report["files"].values(), name
    fixed = _fixed_volume()
    moved = nib.load(out / "moved_on_fixed.nii.gz")
    assert moved.shape == fixed.shape and np.allclose(moved.affine, fixed.affine, atol=1e-4)
    assert nib.load(out / "field_fixed_to_moving.nii.gz").shape == (*fixed.shape, 1, 3)
    src = nib.load(GLIOMA)  # moving-grid files keep the moving file's voxel order
    assert nib.load(out / "field_moving_to_fixed.nii.gz").shape == (*src.shape, 1, 3)
    assert np.allclose(nib.load(out / "lesion_mask.nii.gz").affine, src.affine, atol=1e-4)
    # the ITK file gives the same TRE through evaluate's path (fixed grid, fixed -> moving)
    ids = tuple(result.tre["after"]["per_landmark"])
    from_file = landmark_tre(ids, _moving_mm, _fixed_mm, out / "field_fixed_to_moving.nii.gz")
    assert from_file["mean"] == pytest.approx(result.tre["after"]["mean"], abs=1e-3)


# ----------------------------------------------------------------------------- errors and CLI
def test_mismatched_pairs_are_refused_with_one_line(tmp_path):
    moving = read_nifti(GLIOMA)
    slab = Volume(np.asarray(moving.array)[:, :, 20:21], moving.affine, name="slice.nii.gz")
    with pytest.raises(VolumeError, match=r"slice\.nii\.gz.*2D slice"):
        api.register_pair(GLIOMA, slab, config="test", fine_tune_steps=0)
    empty = Volume(np.zeros((40, 40, 40), np.float32), np.eye(4), name="empty.nii.gz")
    with pytest.raises(VolumeError, match=r"empty\.nii\.gz.*constant"):
        api.register_pair(empty, GLIOMA, config="test", fine_tune_steps=0)
    a = write_landmarks(Landmarks(("1", "2"), np.zeros((2, 3))), tmp_path / "a.csv")
    b = write_landmarks(Landmarks(("1", "3"), np.zeros((2, 3))), tmp_path / "b.csv")
    with pytest.raises(LandmarkError, match=r"a\.csv \(moving\) vs .*b\.csv \(fixed\).*3"):
        api.register_pair(GLIOMA, GLIOMA, config="test", landmarks_moving=a, landmarks_fixed=b)
    with pytest.raises(ValueError, match=r"a\.csv.*one scan only"):
        api.register_pair(GLIOMA, GLIOMA, config="test", landmarks_moving=a)


def test_cli_register_fixed_end_to_end(tmp_path, capsys):
    fixed = write_nifti(_fixed_volume(), tmp_path / "fixed.nii.gz")
    mov_csv, fix_csv, _m, _f = _landmarks(tmp_path)
    out = tmp_path / "out"
    args = ["register", str(GLIOMA), "--fixed", str(fixed), "--out", str(out), "--preset", "test"]
    steps = ["--steps", "0", "--instance-steps", "1"]
    marks = ["--landmarks-moving", str(mov_csv), "--landmarks-fixed", str(fix_csv)]
    assert main([*args, *steps, *marks, "--qc"]) == 0
    printed = capsys.readouterr().out
    assert "TRE (5 landmarks): before" in printed and str(out.resolve()) in printed
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "pair" and report["fixed"] == str(fixed)
    assert report["provenance"]["instance_optimisation"]["steps"] == 1
    assert report["tre"]["after"]["mean"] < report["tre"]["before"]["mean"]
    assert (out / "field_moving_to_fixed.nii.gz").is_file()
    assert (out / "qc.png").stat().st_size > 10_000

    two = ["register", str(GLIOMA), str(GLIOMA), *args[2:]]
    for argv in ([*args, "--atlas", str(GLIOMA)], two, [*args, "--jobs", "2"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--fixed" in err[0] and "pair mode" in err[0]
    assert main(["register", str(GLIOMA), "--out", str(tmp_path / "x"), *marks]) == 2
    assert "need --fixed" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
