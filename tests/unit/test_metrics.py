"""Unit tests for napari_girnet.evaluation.metrics and napari_girnet.evaluation.report."""

from __future__ import annotations

import csv
import json
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from napari_girnet.evaluation import metrics as M
from napari_girnet.evaluation.report import flatten_results, format_table, write_report

# ---------------------------------------------------------------------------------------------
# Dice
# ---------------------------------------------------------------------------------------------


def test_dice_two_boxes_exact_fraction():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros((10, 10, 10), bool)
    a[0:4, 0:4, 0:4] = True  # 64 voxels
    b[2:6, 2:6, 0:2] = True  # 32 voxels; overlap = [2:4, 2:4, 0:2] = 8 voxels
    expected = Fraction(2 * 8, 64 + 32)  # = 1/6
    assert M.dice(a, b) == pytest.approx(float(expected), abs=1e-15)
    # nonzero = foreground, any numeric dtype
    assert M.dice(a.astype(np.float32) * 0.7, b.astype(np.uint8) * 3) == pytest.approx(1 / 6)


def test_dice_empty_cases_and_2d():
    z = np.zeros((5, 5), bool)
    one = z.copy()
    one[2, 2] = True
    assert M.dice(z, z) == 1.0
    assert M.dice(one, z) == 0.0
    assert M.dice(z, one) == 0.0
    assert M.dice(one, one) == 1.0


def test_dice_flip_invariant_is_a_max():
    truth = np.zeros((8, 8), bool)
    truth[:, :3] = True  # 24 voxels
    inverted = ~truth
    assert M.dice(inverted, truth) == 0.0
    assert M.dice_flip_invariant(inverted, truth) == 1.0
    pred = np.zeros((8, 8), bool)
    pred[:, :2] = True
    assert M.dice_flip_invariant(pred, truth) == pytest.approx(M.dice(pred, truth))


@pytest.mark.parametrize("fn", [M.dice, M.dice_flip_invariant, M.hd95, M.assd])
def test_mask_metrics_reject_bad_input(fn):
    a = np.zeros((4, 4, 4))
    with pytest.raises(ValueError, match="same shape"):
        fn(a, np.zeros((4, 4, 5)))
    bad = a.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="pred: contains NaN"):
        fn(bad, a)
    with pytest.raises(ValueError, match="truth"):
        fn(a, np.array(["x"] * 64).reshape(4, 4, 4))


# ---------------------------------------------------------------------------------------------
# HD95 / ASSD
# ---------------------------------------------------------------------------------------------


def _ball(shape, center, radius, spacing=None):
    spacing = np.ones(len(shape)) if spacing is None else np.asarray(spacing, float)
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, center, spacing, strict=True))
    return d2 <= radius**2


def _surface_points_bruteforce(mask):
    """Surface voxels by explicit face-neighbour checks on a background-padded array."""
    padded = np.pad(mask, 1, constant_values=False)
    pts = []
    for idx in np.argwhere(mask):
        p = idx + 1
        for ax in range(mask.ndim):
            for step in (-1, 1):
                q = p.copy()
                q[ax] += step
                if not padded[tuple(q)]:
                    pts.append(idx)
                    break
            else:
                continue
            break
    return np.array(pts, dtype=float)


def _oracle(a, b, spacing):
    pa = _surface_points_bruteforce(a) * spacing
    pb = _surface_points_bruteforce(b) * spacing
    d = cdist(pa, pb)
    d_ab, d_ba = d.min(axis=1), d.min(axis=0)
    hd_max = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    hd_pooled = np.percentile(np.concatenate([d_ab, d_ba]), 95)
    assd = (d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size)
    return hd_max, hd_pooled, assd


def test_hd95_concentric_spheres():
    shape, c = (32, 32, 32), (16, 16, 16)
    r1, r2 = 9, 5
    a, b = _ball(shape, c, r1), _ball(shape, c, r2)
    assert abs(M.hd95(a, b) - (r1 - r2)) <= 1.0
    assert abs(M.assd(a, b) - (r1 - r2)) <= 1.0
    assert M.hd95(a, a) == 0.0
    assert M.assd(b, b) == 0.0


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 0.7, 1.3)])
def test_hd95_assd_match_bruteforce_oracle(spacing):
    rng = np.random.default_rng(0)
    a = ndimage.binary_opening(rng.random((14, 12, 10)) > 0.55)
    b = ndimage.binary_opening(rng.random((14, 12, 10)) > 0.6)
    b[0:3, :, :] = True  # touches the array border: border voxels are surface
    assert a.any() and b.any()
    sp = np.asarray(spacing)
    hd_max, hd_pooled, assd = _oracle(a, b, sp)
    assert M.hd95(a, b, spacing) == pytest.approx(hd_max, rel=1e-12)
    assert M.hd95(a, b, spacing, convention="pooled") == pytest.approx(hd_pooled, rel=1e-12)
    assert M.assd(a, b, spacing) == pytest.approx(assd, rel=1e-12)
    # symmetric
    assert M.hd95(b, a, spacing) == pytest.approx(hd_max, rel=1e-12)
    assert M.assd(b, a, spacing) == pytest.approx(assd, rel=1e-12)


def test_hd95_2d_oracle_and_anisotropic_spacing():
    a = np.zeros((9, 9), bool)
    b = np.zeros((9, 9), bool)
    a[3, 3] = True
    b[5, 3] = True
    assert M.hd95(a, b, (2.0, 1.0)) == pytest.approx(4.0)
    assert M.assd(a, b, (2.0, 1.0)) == pytest.approx(4.0)
    assert M.hd95(a, b, (1.0, 3.0)) == pytest.approx(2.0)
    rng = np.random.default_rng(3)
    a = rng.random((20, 17)) > 0.7
    b = rng.random((20, 17)) > 0.8
    sp = np.array([0.5, 1.5])
    hd_max, _, assd = _oracle(a, b, sp)
    assert M.hd95(a, b, sp) == pytest.approx(hd_max, rel=1e-12)
    assert M.assd(a, b, sp) == pytest.approx(assd, rel=1e-12)


def test_surface_metrics_empty_cases():
    z = np.zeros((6, 6, 6), bool)
    one = z.copy()
    one[1, 2, 3] = True
    assert M.hd95(z, z) == 0.0
    assert M.assd(z, z) == 0.0
    assert M.hd95(one, z) == math.inf
    assert M.hd95(z, one) == math.inf
    assert M.assd(z, one) == math.inf


def test_surface_metrics_bad_spacing_and_ndim():
    a = np.zeros((4, 4, 4), bool)
    with pytest.raises(ValueError, match="spacing: expected 3 values"):
        M.hd95(a, a, (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        M.assd(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="pred: expected a 2D or 3D"):
        M.hd95(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="convention"):
        M.hd95(a, a, convention="mean")


def test_volume_mm3():
    m = np.zeros((5, 5, 5), bool)
    m[1:3, 1:4, 0:1] = True  # 6 voxels
    assert M.volume_mm3(m, (0.5, 2.0, 3.0)) == pytest.approx(18.0)
    assert M.volume_mm3(np.zeros((3, 3)), (1.0, 1.0)) == 0.0
    with pytest.raises(ValueError, match="spacing"):
        M.volume_mm3(m, (1.0, 1.0))


# ---------------------------------------------------------------------------------------------
# TRE and displacement sampling
# ---------------------------------------------------------------------------------------------


def test_tre_known_shift_and_summary():
    rng = np.random.default_rng(1)
    target = rng.random((7, 3)) * 100
    mapped = target + np.array([3.0, 4.0, 0.0])
    d = M.tre(mapped, target)
    assert d.shape == (7,)
    np.testing.assert_allclose(d, 5.0)
    s = M.tre_summary(d)
    assert s["n"] == 7
    assert s["mean"] == pytest.approx(5.0)
    assert s["sd"] == pytest.approx(0.0, abs=1e-12)
    assert s["median"] == pytest.approx(5.0)
    assert s["max"] == pytest.approx(5.0)
    s2 = M.tre_summary(np.array([1.0, 2.0, 6.0]))
    assert (s2["mean"], s2["median"], s2["max"]) == (3.0, 2.0, 6.0)
    assert s2["sd"] == pytest.approx(np.sqrt(14 / 3))


def test_tre_empty_and_errors():
    assert M.tre(np.zeros((0, 3)), np.zeros((0, 3))).shape == (0,)
    s = M.tre_summary(np.zeros(0))
    assert s["n"] == 0 and math.isnan(s["mean"]) and math.isnan(s["sd"])
    with pytest.raises(ValueError, match="same shape"):
        M.tre(np.zeros((3, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="points_mapped_mm"):
        M.tre(np.zeros((3, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="points_target_mm: contains NaN"):
        M.tre(np.zeros((1, 3)), np.array([[np.nan, 0, 0]]))
    with pytest.raises(ValueError, match="distances"):
        M.tre_summary(np.zeros((2, 2)))


def test_sample_displacement_linear_field_exact():
    shape = (6, 7, 8)
    grids = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    coef = np.array([[0.5, -1.0, 0.25, 2.0], [0.0, 0.3, 0.1, -1.0], [1.0, 0.0, -0.2, 0.5]])
    disp = np.stack([c[0] * grids[0] + c[1] * grids[1] + c[2] * grids[2] + c[3] for c in coef])
    pts = np.array([[1.25, 2.5, 3.75], [0.0, 0.0, 0.0], [4.9, 5.1, 6.99], [2.0, 3.0, 4.5]])
    out = M.sample_displacement(disp, pts)
    expected = pts @ coef[:, :3].T + coef[:, 3]
    np.testing.assert_allclose(out, expected, atol=1e-12)
    # outside -> nearest edge value
    out_far = M.sample_displacement(disp, np.array([[-3.0, 2.0, 2.0], [10.0, 2.0, 2.0]]))
    np.testing.assert_allclose(out_far[0], disp[:, 0, 2, 2])
    np.testing.assert_allclose(out_far[1], disp[:, 5, 2, 2])
    # mapped point q + u(q) with TRE
    q = pts[:1]
    mapped = q + M.sample_displacement(disp, q)
    assert M.tre(mapped, mapped).tolist() == [0.0]


def test_sample_displacement_2d_and_errors():
    disp = np.zeros((2, 4, 5))
    disp[0] = 1.5
    out = M.sample_displacement(disp, np.array([[1.2, 3.3]]), order=3)
    np.testing.assert_allclose(out, [[1.5, 0.0]], atol=1e-12)
    assert M.sample_displacement(disp, np.zeros((0, 2))).shape == (0, 2)
    with pytest.raises(ValueError, match="points_vox"):
        M.sample_displacement(disp, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="disp"):
        M.sample_displacement(np.zeros((3, 4, 5)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="order"):
        M.sample_displacement(disp, np.zeros((1, 2)), order=7)


# ---------------------------------------------------------------------------------------------
# MDE
# ---------------------------------------------------------------------------------------------


def _mde_setup(shape=(40, 12, 10)):
    lesion = np.zeros(shape, bool)
    lesion[2:5, 4:8, 3:7] = True
    brain = np.zeros(shape, bool)
    brain[1:39, 1:11, 1:9] = True
    return lesion, brain


def test_mde_constant_error_and_partition():
    lesion, brain = _mde_setup()
    rng = np.random.default_rng(2)
    disp_true = rng.normal(size=(3, *lesion.shape))
    c = np.array([1.0, -2.0, 0.5])
    spacing = (2.0, 1.0, 3.0)
    disp_pred = disp_true + c[:, None, None, None]
    res = M.mean_deformation_error(disp_pred, disp_true, lesion, brain, spacing, near_mm=20.0)
    expected = np.linalg.norm(c * np.array(spacing))
    for region in ("in", "near", "far", "brain"):
        assert res[region]["n_voxels"] > 0
        assert res[region]["mean"] == pytest.approx(expected)
        assert res[region]["sd"] == pytest.approx(0.0, abs=1e-9)
    n = {k: v["n_voxels"] for k, v in res.items()}
    assert n["in"] + n["near"] + n["far"] == n["brain"] == int(brain.sum())


def test_mde_region_membership_at_known_distances():
    lesion, brain = _mde_setup()
    # lesion occupies axis-0 rows 2..4; at spacing 1, voxel (x, 5, 5) with x >= 5 is at
    # distance x - 4 mm from the lesion
    disp_true = np.zeros((3, *lesion.shape))
    disp_pred = np.zeros_like(disp_true)
    disp_pred[0, 4 + 10, 5, 5] = 7.0  # distance 10 -> near (<= 10)
    disp_pred[0, 4 + 11, 5, 5] = 9.0  # distance 11 -> far
    disp_pred[0, 3, 5, 5] = 4.0  # inside the lesion
    res = M.mean_deformation_error(disp_pred, disp_true, lesion, brain, near_mm=10.0)
    assert res["near"]["mean"] * res["near"]["n_voxels"] == pytest.approx(7.0)
    assert res["far"]["mean"] * res["far"]["n_voxels"] == pytest.approx(9.0)
    assert res["in"]["mean"] * res["in"]["n_voxels"] == pytest.approx(4.0)
    assert res["brain"]["mean"] * res["brain"]["n_voxels"] == pytest.approx(20.0)
    # anisotropic spacing doubles distances along axis 0: distance 10 voxels -> 20 mm -> far
    res2 = M.mean_deformation_error(
        disp_pred, disp_true, lesion, brain, spacing=(2.0, 1.0, 1.0), near_mm=19.0
    )
    assert res2["far"]["mean"] * res2["far"]["n_voxels"] == pytest.approx(2 * (7.0 + 9.0))


def test_mde_empty_regions_and_errors():
    lesion, brain = _mde_setup()
    d = np.zeros((3, *lesion.shape))
    res = M.mean_deformation_error(d, d, lesion, brain, near_mm=1000.0)
    assert res["far"]["n_voxels"] == 0 and math.isnan(res["far"]["mean"])
    with pytest.raises(ValueError, match="lesion mask is empty"):
        M.mean_deformation_error(d, d, np.zeros_like(lesion), brain)
    with pytest.raises(ValueError, match="brain"):
        M.mean_deformation_error(d, d, lesion, np.zeros_like(brain))
    with pytest.raises(ValueError, match="same shape"):
        M.mean_deformation_error(d, d[:, :-1], lesion, brain)
    with pytest.raises(ValueError, match="lesion: shape"):
        M.mean_deformation_error(d, d, lesion[:-1], brain)
    bad = d.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="disp_pred"):
        M.mean_deformation_error(bad, d, lesion, brain)
    with pytest.raises(ValueError, match="spacing"):
        M.mean_deformation_error(d, d, lesion, brain, spacing=(1.0, 1.0))


def test_mde_2d():
    lesion = np.zeros((20, 20), bool)
    lesion[8:12, 8:12] = True
    brain = np.ones((20, 20), bool)
    d = np.zeros((2, 20, 20))
    res = M.mean_deformation_error(d + 1.0, d, lesion, brain, spacing=(1.0, 1.0), near_mm=5.0)
    assert res["brain"]["mean"] == pytest.approx(np.sqrt(2.0))
    assert res["in"]["n_voxels"] == 16


# ---------------------------------------------------------------------------------------------
# Jacobian-based quality
# ---------------------------------------------------------------------------------------------


def test_folding_fraction_known_block():
    j = np.ones((10, 10, 10))
    j[0:2, 0:5, 0:5] = -0.5  # 50 folded voxels
    j[9, 9, 9] = 0.0  # det J == 0 counts as folded
    assert M.folding_fraction(j) == pytest.approx(51 / 1000)
    mask = np.zeros_like(j, bool)
    mask[0:2, :, :] = True  # 200 voxels, 50 folded
    assert M.folding_fraction(j, mask) == pytest.approx(0.25)
    assert math.isnan(M.folding_fraction(j, np.zeros_like(mask)))
    with pytest.raises(ValueError, match="mask: shape"):
        M.folding_fraction(j, mask[:-1])
    with pytest.raises(ValueError, match="jac_det"):
        M.folding_fraction(np.full((3, 3), np.nan))


def test_log_jacobian_std():
    assert M.log_jacobian_std(np.ones((6, 6, 6))) == 0.0
    j = np.ones((4, 4))
    j[:2] = np.e
    assert M.log_jacobian_std(j) == pytest.approx(0.5)
    j[0, 0] = -1.0  # clipped to eps
    val = M.log_jacobian_std(j, eps=1e-3)
    assert np.isfinite(val)
    mask = np.zeros((4, 4), bool)
    mask[2:] = True
    assert M.log_jacobian_std(j, mask) == 0.0
    with pytest.raises(ValueError, match="eps"):
        M.log_jacobian_std(j, eps=0.0)


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def _results():
    return {
        "case": "sub-01",
        "dice": np.float32(0.75),
        "hd95_mm": float("inf"),
        "mde_mm": {"far": {"mean": float("nan"), "sd": np.nan, "n_voxels": np.int64(0)}},
        "tre_mm": {
            "mean": 2.5,
            "per_landmark": {"1": 2.0, "7": np.float64(3.0)},
            "list": np.array([0.5, 1.5]),
        },
        "ok": np.bool_(True),
    }


def test_report_json_csv_round_trip(tmp_path):
    jpath = tmp_path / "a" / "b" / "report.json"
    cpath = tmp_path / "c" / "report.csv"
    write_report(_results(), jpath, cpath)
    data = json.loads(jpath.read_text())
    assert data["case"] == "sub-01"
    assert data["dice"] == pytest.approx(0.75)
    assert data["hd95_mm"] is None
    assert data["mde_mm"]["far"] == {"mean": None, "sd": None, "n_voxels": 0}
    assert data["tre_mm"]["per_landmark"] == {"1": 2.0, "7": 3.0}
    assert data["tre_mm"]["list"] == [0.5, 1.5]
    assert data["ok"] is True
    assert "  " in jpath.read_text()  # indented

    with cpath.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["metric", "value"]
    table = dict(rows[1:])
    assert table["case"] == "sub-01"
    assert float(table["dice"]) == pytest.approx(0.75)
    assert float(table["hd95_mm"]) == math.inf
    assert math.isnan(float(table["mde_mm.far.mean"]))
    assert table["mde_mm.far.n_voxels"] == "0"
    assert float(table["tre_mm.per_landmark.7"]) == 3.0
    assert float(table["tre_mm.list.1"]) == 1.5
    assert table["ok"] == "true"


def test_report_json_only_and_errors(tmp_path):
    write_report({"x": 1}, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == {"x": 1}
    with pytest.raises(ValueError, match="results"):
        write_report([1, 2], tmp_path / "r2.json")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"bad\.obj"):
        write_report({"bad": {"obj": object()}}, tmp_path / "r3.json")


def test_format_table():
    flat = flatten_results(_results())
    text = format_table(_results())
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "value"]
    assert len(lines) == 2 + len(flat)
    assert any(ln.split() == ["tre_mm.per_landmark.7", "3"] for ln in lines)
    assert any(ln.split() == ["hd95_mm", "inf"] for ln in lines)
    assert format_table({}) == "(no metrics)"
