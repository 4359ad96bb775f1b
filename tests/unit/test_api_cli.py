"""The Python API and the ``girnet`` CLI end to end on tiny real-derived fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_girnet import api
from napari_girnet.cli import main
from napari_girnet.data.landmarks import Landmarks, write_landmarks
from napari_girnet.data.nifti import read_displacement, read_nifti, write_displacement

DATA = Path(__file__).resolve().parents[1] / "data"
GLIOMA = DATA / "glioma_t1_3mm.nii.gz"
GLIOMA_MASK = DATA / "glioma_tumor_3mm.nii.gz"


@pytest.fixture(scope="module")
def glioma_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("register")
    result = api.register(
        GLIOMA,
        config="test",
        fine_tune_steps=3,
        pseudo_cases=1,
        truth=GLIOMA_MASK,
        checkpoint_dir=out / "checkpoint",
    )
    paths = result.save(out)
    return result, paths, out


def test_register_outputs_overlay_the_input_scan(glioma_result):
    result, paths, out = glioma_result
    src = nib.load(GLIOMA)
    for key in ("lesion_probability", "lesion_mask", "inpainted", "atlas_to_scan", "jacobian"):
        img = nib.load(paths[key])
        assert img.shape == src.shape, key
        np.testing.assert_allclose(img.affine, src.affine, atol=1e-5, err_msg=key)
    assert nib.aff2axcodes(nib.load(paths["lesion_mask"]).affine) == ("L", "P", "S")
    s2a = nib.load(paths["scan_to_atlas"])
    np.testing.assert_allclose(s2a.affine, result.atlas.image.affine, atol=1e-5)
    field = nib.load(paths["field_atlas_to_scan"])
    assert field.shape == (*src.shape, 1, 3)
    assert field.header["intent_code"] == 1007
    mask = np.asarray(nib.load(paths["lesion_mask"]).dataobj)
    assert set(np.unique(mask)) <= {0, 1}
    prob = np.asarray(nib.load(paths["lesion_probability"]).dataobj)
    assert prob.min() >= 0 and prob.max() <= 1
    assert (out / "checkpoint" / "last.pt").is_file()


def test_register_report_has_metrics_timings_and_conventions(glioma_result):
    _result, paths, _ = glioma_result
    report = json.loads(paths["report"].read_text())
    assert 0.0 <= report["metrics"]["dice"] <= 1.0
    assert report["metrics"]["hd95_mm"] is None or report["metrics"]["hd95_mm"] >= 0
    for key in ("prepare_s", "fine_tune_s", "predict_s", "total_s"):
        assert report["timings_s"][key] >= 0
    assert report["seed"] == 0 and report["preset"] == "test"
    assert "field_atlas_to_scan" in report["conventions"]["fields"]
    assert report["napari_girnet_version"]


def test_untrained_segnet_falls_back_to_the_atlas_outlier(glioma_result):
    """Random weights give an empty SegNet mask, so "auto" detects the lesion against the atlas."""
    result, _paths, _ = glioma_result
    det = result.provenance["lesion_detection"]
    assert det["source"] == "atlas-outlier"
    assert det["segnet_mask_fraction_of_brain"] == 0.0
    assert det["reason"] == "SegNet mask empty or implausible"
    assert det["fill"] == "atlas" and det["refine"] is True
    assert result.provenance["instance_optimisation"]["target"] == "inpainted scan"
    mask = np.asarray(result.lesion_mask.array) > 0
    assert mask.any()
    assert result.provenance["lesion_detection"]["mask_fraction_of_brain"] < 0.3
    # outside the mask the inpainted scan is the scan itself
    np.testing.assert_allclose(
        result.inpainted.array[~mask], result.scan.array[~mask].astype(np.float32), atol=1e-4
    )


def test_forced_segnet_detector_reports_its_implausible_mask():
    result = api.register(
        GLIOMA, config="test", fine_tune_steps=0, instance_steps=0, detector="segnet"
    )
    det = result.provenance["lesion_detection"]
    assert det["source"] == "segnet" and "implausible" in det["reason"]
    assert not np.asarray(result.lesion_mask.array).any()
    with pytest.raises(ValueError, match="detector"):
        api.register(GLIOMA, config="test", fine_tune_steps=0, detector="magic")


def test_field_maps_scan_points_into_the_atlas(glioma_result):
    """Pulling the atlas through the exported field reproduces atlas_to_scan."""
    from scipy.ndimage import map_coordinates

    result, paths, _ = glioma_result
    disp, grid = read_displacement(paths["field_atlas_to_scan"])
    assert grid.same_grid(result.scan)
    # brain voxels of the scan: their mapped world points, sampled in the atlas
    vox = np.argwhere(result.prepared.native_mask.array)[::7]
    mapped = grid.voxel_to_world(vox + disp[:, vox[:, 0], vox[:, 1], vox[:, 2]].T)
    atlas_vox = result.atlas.image.world_to_voxel(mapped)
    direct = map_coordinates(np.asarray(result.atlas.image.array, np.float64), atlas_vox.T, order=1)
    exported = result.atlas_to_scan.array[vox[:, 0], vox[:, 1], vox[:, 2]]
    # the exported image was interpolated twice (working grid, then native grid)
    assert np.corrcoef(direct, exported)[0, 1] > 0.9
    assert np.median(np.abs(direct - exported)) < 0.05


def test_evaluate_masks_and_tre_with_a_known_field(tmp_path):
    scan = read_nifti(GLIOMA)
    shift_mm = np.array([3.0, 4.0, 0.0])
    disp_vox = np.linalg.inv(scan.affine[:3, :3]) @ shift_mm
    field = np.broadcast_to(disp_vox[:, None, None, None], (3, *scan.shape)).copy()
    write_displacement(tmp_path / "field.nii.gz", field, scan, convention="itk")
    ids = ("1", "2", "3")
    fixed = Landmarks(
        ids, scan.voxel_to_world(np.array([[20, 30, 20], [40, 35, 25], [50, 20, 30]]))
    )
    moving = Landmarks(ids, fixed.world + shift_mm)
    write_landmarks(fixed, tmp_path / "fixed.csv")
    write_landmarks(moving, tmp_path / "moving.csv", fmt="brats")
    res = api.evaluate(
        landmarks_moving=tmp_path / "moving.csv", landmarks_fixed=tmp_path / "fixed.csv"
    )
    assert res["tre_mm"]["mean"] == pytest.approx(5.0)
    res = api.evaluate(
        landmarks_moving=tmp_path / "moving.csv",
        landmarks_fixed=tmp_path / "fixed.csv",
        field=tmp_path / "field.nii.gz",
    )
    assert res["tre_mm"]["mean"] == pytest.approx(0.0, abs=1e-3)
    res = api.evaluate(pred=GLIOMA_MASK, truth=GLIOMA_MASK)
    assert res["dice"] == pytest.approx(1.0)


def test_cli_register_and_bad_input(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "register",
            str(GLIOMA),
            "--out",
            str(out),
            "--preset",
            "test",
            "--steps",
            "1",
            "--pseudo-cases",
            "0",
            "--truth",
            str(GLIOMA_MASK),
            "--qc",
            "--polarity",
            "both",
            "--min-lesion-ml",
            "0.5",
            "--no-refine",
        ]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["inference"]["outlier_polarity"] == "both"
    assert report["config"]["inference"]["outlier_min_volume_mm3"] == 500.0
    assert report["provenance"]["lesion_detection"]["refine"] is False
    printed = capsys.readouterr().out
    assert "Dice" in printed and str(out.resolve()) in printed
    for name in (
        "lesion_probability",
        "lesion_mask",
        "inpainted",
        "atlas_to_scan",
        "scan_to_atlas",
        "field_scan_to_atlas",
        "field_atlas_to_scan",
        "jacobian",
    ):
        assert (out / f"{name}.nii.gz").is_file(), name
    assert (out / "report.json").is_file() and (out / "qc.png").stat().st_size > 10_000
    assert (out / "checkpoint" / "last.pt").is_file()

    bad = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), bad)
    assert main(["register", str(bad), "--out", str(tmp_path / "x"), "--preset", "test"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "four_d.nii.gz" in err[0] and "4D" in err[0]
    assert main(["register", str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "y")]) == 2
    assert "missing.nii.gz" in capsys.readouterr().err


def test_cli_evaluate_and_make_cases_are_deterministic(tmp_path, capsys):
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(GLIOMA_MASK),
                "--truth",
                str(GLIOMA_MASK),
                "--out",
                str(tmp_path / "ev.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "ev.json").read_text())["dice"] == pytest.approx(1.0)
    for run in ("a", "b"):
        assert (
            main(
                [
                    "make-cases",
                    "--out",
                    str(tmp_path / run),
                    "--n",
                    "2",
                    "--seed",
                    "5",
                    "--lesions",
                    "ms",
                ]
            )
            == 0
        )
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert any(f.name == "case.json" for f in files_a)
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    for case_dir in (tmp_path / "a").iterdir():
        for name in ("scan", "lesion", "healthy", "labels", "field"):
            assert (case_dir / f"{name}.nii.gz").is_file(), (case_dir, name)
    case = json.loads(next((tmp_path / "a").rglob("case.json")).read_text())
    assert case["seed"] is not None and "convention" in case and case["lesion_volume_mm3"] > 0
