"""Tests of the peer benchmark's importable logic (benchmarks/peerlib); no ANTs, no registration."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_girnet.data.nifti import read_nifti
from napari_girnet.data.synthetic import SourceBrain
from napari_girnet.data.volume import Volume

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from peerlib import cases as C
from peerlib import runners as R
from peerlib import table as T
from peerlib.scoring import (
    fold_percent,
    mean_label_dice,
    score_field,
    warp_labels,
)

DATA = Path(__file__).resolve().parents[1] / "data"


# ----------------------------------------------------------------------------- scoring
def _blob_case(shape=(40, 8, 8)):
    brain = np.zeros(shape, bool)
    brain[1:-1, 1:-1, 1:-1] = True
    lesion = np.zeros(shape, bool)
    lesion[2:4, 3:5, 3:5] = True  # far (> 30 mm) voxels exist at 2 mm spacing
    return brain, lesion


def test_constant_displacement_error_gives_that_mde():
    brain, lesion = _blob_case()
    rng = np.random.default_rng(0)
    truth = rng.normal(0, 0.3, (3, *brain.shape)).astype(np.float32)
    pred = truth.copy()
    pred[0] += 1.5  # 1.5 voxels along axis 0 at 2 mm -> 3 mm
    pred[2] -= 2.0  # 2 voxels along axis 2 at 2 mm -> 4 mm; |(3, 0, 4)| = 5 mm
    s = score_field(pred, truth, lesion, brain, (2.0, 2.0, 2.0))
    for key in ("mde_in", "mde_near", "mde_far", "mde_brain"):
        assert s[key] == pytest.approx(5.0, abs=1e-5)
    assert math.isnan(s["label_dice"]) and math.isnan(s["lesion_dice"])


def test_near_and_far_split_at_30_mm():
    shape = (40, 6, 6)
    brain = np.ones(shape, bool)
    lesion = np.zeros(shape, bool)
    lesion[0] = True
    truth = np.zeros((3, *shape), np.float32)
    pred = np.zeros_like(truth)
    pred[1, 16:] = 1.0  # 1 mm error (1 mm voxels) from x = 16 on
    s = score_field(pred, truth, lesion, brain, (1.0, 1.0, 1.0))
    # near: x in 1..30 -> errors 0 for 1..15, 1 for 16..30 -> 15/30; far: x 31..39 all 1
    assert s["mde_near"] == pytest.approx(0.5)
    assert s["mde_far"] == pytest.approx(1.0)
    assert s["mde_in"] == pytest.approx(0.0)


def test_fold_percent_identity_and_full_fold():
    brain, _ = _blob_case()
    zero = np.zeros((3, *brain.shape), np.float32)
    assert fold_percent(zero, brain) == 0.0
    folded = zero.copy()
    folded[0] = -2.0 * np.arange(brain.shape[0], dtype=np.float32)[:, None, None]  # det = -1
    assert fold_percent(folded, brain) == pytest.approx(100.0)


def test_warp_labels_integer_shift_and_label_dice():
    labels = np.zeros((6, 6, 6), np.int16)
    labels[2:4, 2:4, 2:4] = 3
    shift = np.zeros((3, 6, 6, 6), np.float32)
    shift[0] = 1.0  # out(x) = labels(x + 1)
    moved = warp_labels(labels, shift)
    assert np.array_equal(moved[1:3, 2:4, 2:4], np.full((2, 2, 2), 3))
    assert int((moved == 3).sum()) == 8
    # Dice of the shifted cube against the original: overlap 4 of 8 + 8 -> 0.5
    assert mean_label_dice(moved, labels) == pytest.approx(0.5)
    truth = np.array([[[1, 1, 2, 0]]])
    pred = np.array([[[1, 2, 2, 5]]])
    # label 1: 2*1/(1+2) = 2/3; label 2: 2*1/(2+1) = 2/3; label 5 absent from truth: ignored
    assert mean_label_dice(pred, truth) == pytest.approx(2 / 3)
    assert math.isnan(mean_label_dice(pred, np.zeros_like(truth)))


def test_score_field_with_labels_and_mask():
    brain, lesion = _blob_case()
    labels = np.where(brain, 1 + (np.indices(brain.shape)[0] > 20), 0).astype(np.int16)
    zero = np.zeros((3, *brain.shape), np.float32)
    s = score_field(zero, zero, lesion, brain, (1, 1, 1), labels, None, lesion)
    assert s["label_dice"] == pytest.approx(1.0)
    assert s["lesion_dice"] == pytest.approx(1.0) and s["lesion_hd95"] == 0.0
    assert s["mde_brain"] == 0.0


def test_ants_mask_removes_dilated_lesion():
    brain = np.ones((9, 9, 9), bool)
    lesion = np.zeros_like(brain)
    lesion[4, 4, 4] = True
    mask = R.ants_mask(brain, lesion, dilation=1)
    assert int((~mask).sum()) == 7  # the voxel and its 6 face neighbours
    assert not mask[4, 4, 5] and mask[4, 5, 5]


def test_parse_gnu_time_output():
    assert R.parse_time_output("204800 1.50 0.25\n") == (200.0, 1.75)
    rss, cpu = R.parse_time_output("Command exited with non-zero status 1\n1024 2.00 1.00\n")
    assert (rss, cpu) == (1.0, 3.0)
    assert all(math.isnan(v) for v in R.parse_time_output("garbage"))


# ----------------------------------------------------------------------------- table
ROWS = [
    {"task": "healthy", "case": "a", "kind": "ms", "method": "ants", "mde_in": 2.0, "wall_s": 10.0},
    {"task": "healthy", "case": "b", "kind": "ms", "method": "ants", "mde_in": 4.0, "wall_s": 30.0},
    {"task": "healthy", "case": "a", "kind": "ms", "method": "girnet", "mde_in": 1.5,
     "wall_s": 5.0, "lesion_dice": 0.5},
    {"task": "healthy", "case": "b", "kind": "ms", "method": "girnet", "mde_in": 1.5,
     "wall_s": 15.0, "lesion_dice": float("nan")},
]  # fmt: skip


def test_summary_means_and_nan_handling():
    summary = T.summarise(ROWS)
    assert [s["method"] for s in summary] == ["ants", "girnet"]
    ants, girnet = summary
    assert ants["n"] == 2 and ants["mde_in"] == 3.0 and ants["wall_s"] == 20.0
    assert math.isnan(ants["lesion_dice"])  # absent everywhere
    assert girnet["lesion_dice"] == 0.5  # NaN case skipped
    assert girnet["mde_in"] == 1.5 and girnet["wall_s"] == 10.0


def test_ratios_girnet_over_ants():
    summary = T.summarise(ROWS)
    rat = T.ratios(summary, ["girnet", "girnet-untrained"], ["ants", "ants-masked"])
    assert len(rat) == 1 and rat[0]["method"] == "girnet / ants"
    assert rat[0]["mde_in"] == pytest.approx(0.5)
    assert rat[0]["wall_s"] == pytest.approx(0.5)
    assert math.isnan(rat[0]["lesion_dice"])  # NaN denominator


def test_markdown_and_csv_formatting(tmp_path):
    summary = T.summarise(ROWS)
    md = T.markdown(summary, metrics=("mde_in", "lesion_dice", "wall_s"))
    assert md.splitlines() == [
        "| task | method | MDE in (mm) | lesion Dice | wall (s) |",
        "|---|---|--:|--:|--:|",
        "| healthy | ants | 3.00 | - | 20 |",
        "| healthy | girnet | 1.50 | 0.500 | 10 |",
    ]
    rat = T.ratio_markdown(T.ratios(summary, ["girnet"], ["ants"]), metrics=("mde_in",))
    assert rat.splitlines()[-1] == "| healthy | girnet / ants | 0.50 |"
    path = T.write_csv(ROWS, tmp_path / "rows.csv")
    with path.open() as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == ["task", "case", "kind", "method", "mde_in", "wall_s", "lesion_dice"]
    assert got[2]["mde_in"] == "1.5" and got[3]["lesion_dice"] == "" and got[0]["lesion_dice"] == ""


def test_box_plot_writes_png(tmp_path):
    rows = [dict(r, mde_near=1.0, mde_far=0.5) for r in ROWS]
    path = T.box_plot(rows, tmp_path / "box.png", "healthy")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- cases
@pytest.fixture(scope="module")
def colin() -> SourceBrain:
    vol = read_nifti(DATA / "colin27_3mm.nii.gz").canonical()
    arr = np.asarray(vol.array, np.float32)
    return SourceBrain("colin3mm", vol.with_array(arr / arr.max()))


@pytest.fixture(scope="module")
def ms_mask(colin) -> np.ndarray:
    mask = read_nifti(DATA / "ms_masks_3mm" / "patient12_lesion_3mm.nii.gz").canonical()
    return C.mask_on_grid(mask, colin.image) & colin.brain_mask()


def test_plan_cases_default_mix():
    specs = C.plan_cases(6, 0, stroke_ids=["999", "996"])
    assert [s.kind for s in specs] == ["tumour", "ms", "stroke"] * 2
    assert [s.brain for s in specs] == [
        "oasis1119", "oasis1122", "oasis1125", "oasis1128", "oasis1119", "oasis1122",
    ]  # fmt: skip
    assert [s.lesion for s in specs] == ["synthetic", "ms20", "stroke999"] * 1 + [
        "synthetic", "ms18", "stroke996",
    ]  # fmt: skip
    assert specs == C.plan_cases(6, 0, stroke_ids=["999", "996"])
    assert specs[0].seed != C.plan_cases(6, 1, stroke_ids=["999", "996"])[0].seed
    with pytest.raises(ValueError, match="stroke"):
        C.plan_cases(3, 0, stroke_ids=[])


def test_case_builder_is_deterministic(colin, ms_mask, tmp_path):
    assert ms_mask.sum() > 0
    spec = C.CaseSpec("t", "ms", "colin3mm", "ms12", 123)
    lesion = C.dark_lesion(colin, ms_mask, "ms12", "ms", seed=5)
    a = C.build_case(spec, colin, lesion)
    b = C.build_case(spec, colin, C.dark_lesion(colin, ms_mask, "ms12", "ms", seed=5))
    for key in ("scan", "lesion", "healthy", "brain_mask"):
        assert np.array_equal(getattr(a, key).array, getattr(b, key).array), key
    assert np.array_equal(a.field, b.field)
    other = C.build_case(C.CaseSpec("t", "ms", "colin3mm", "ms12", 124), colin, lesion)
    assert not np.array_equal(a.field, other.field)
    # the pasted lesion is darker than the brain around it
    scan = np.asarray(a.scan.array)
    les = np.asarray(a.lesion.array, bool)
    assert scan[les].mean() < scan[np.asarray(a.brain_mask.array, bool) & ~les].mean()
    # stored and read back, with the cache key
    folder = C.save_case(tmp_path / "t", spec, a, colin)
    assert C.cached(folder, spec) and not C.cached(folder, C.CaseSpec("t", "ms", "x", "ms12", 1))
    back = C.load_case(folder)
    assert back.spec == spec
    assert np.array_equal(back.case.field, a.field)
    assert np.array_equal(back.source.array, colin.image.array)


def test_synthetic_tumour_deterministic_and_inside(colin):
    t1 = C.synthetic_tumour(colin, seed=3)
    t2 = C.synthetic_tumour(colin, seed=3)
    assert np.array_equal(t1.mask.array, t2.mask.array)
    assert np.array_equal(t1.appearance.array, t2.appearance.array)
    mask = np.asarray(t1.mask.array, bool)
    assert mask.any() and not (mask & ~colin.brain_mask()).any()
    assert not np.array_equal(mask, C.synthetic_tumour(colin, seed=4).mask.array)
    brain_values = np.asarray(colin.image.array)[colin.brain_mask()]
    assert np.asarray(t1.appearance.array)[mask].mean() < np.quantile(brain_values, 0.25)


def test_dark_lesion_rejects_empty_mask(colin):
    with pytest.raises(ValueError, match="empty"):
        C.dark_lesion(colin, np.zeros(colin.image.shape, bool), "x", "ms", 0)


def test_stroke_candidates_pick_largest_indices(tmp_path, colin):
    from napari_girnet.data.nifti import write_nifti

    grid = colin.image
    big = np.zeros(grid.shape, np.uint8)
    big[20:30, 20:30, 20:30] = 1  # 1000 voxels of 27 mm^3 = 27 mL
    small = np.zeros(grid.shape, np.uint8)
    small[20, 20, 20] = 1
    for idx, arr in ((5, big), (12, big), (40, small), (7, big)):
        write_nifti(Volume(arr, grid.affine), tmp_path / f"bwsrsub-{idx}_lesion.nii.gz")
    found = C.stroke_candidates(tmp_path, grid, 2, min_ml=5.0)
    assert [i for i, _ in found] == ["12", "7"]  # 40 is too small
    assert int(found[0][1].sum()) == 1000
