"""Synthetic longitudinal pairs (napari_girnet.data.pairs) on the 3 mm glioma fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_girnet.core.spatial import jacobian_determinant, warp
from napari_girnet.data.landmarks import read_landmarks
from napari_girnet.data.nifti import read_displacement, read_nifti
from napari_girnet.data.pairs import NEAR_MM, PairError, SyntheticPair, make_pair, write_pair
from napari_girnet.data.volume import Volume
from napari_girnet.evaluation.metrics import sample_displacement

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def pre() -> tuple[Volume, Volume, np.ndarray]:
    scan = read_nifti(DATA / "glioma_t1_3mm.nii.gz").canonical()
    arr = np.asarray(scan.array, dtype=np.float32)
    arr /= np.percentile(arr[arr > 0], 99.5)
    scan = scan.with_array(arr)
    brain = scan.with_array(ndi.binary_fill_holes(arr > 0))
    lesion = np.asarray(read_nifti(DATA / "glioma_tumor_3mm.nii.gz").canonical().array) > 0
    return scan, brain, lesion


@pytest.fixture(scope="module")
def pairs(pre: tuple[Volume, Volume, np.ndarray]) -> dict[str, SyntheticPair]:
    scan, brain, lesion = pre
    return {
        c: make_pair(scan, brain, lesion=lesion, change=c, seed=3)
        for c in ("shrink", "grow", "resect", "none")
    }


def _warp(array: np.ndarray, disp: np.ndarray) -> np.ndarray:
    src = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    out = warp(src, torch.from_numpy(np.ascontiguousarray(disp, dtype=np.float32))[None])
    return out[0, 0].numpy()


def test_same_seed_same_pair_and_bytes(
    pre: tuple[Volume, Volume, np.ndarray], pairs: dict[str, SyntheticPair], tmp_path: Path
) -> None:
    scan, brain, lesion = pre
    again = make_pair(scan, brain, lesion=lesion, change="shrink", seed=3)
    first = pairs["shrink"]
    assert np.array_equal(again.fixed.array, first.fixed.array)
    assert np.array_equal(again.field_fixed_to_moving, first.field_fixed_to_moving)
    assert np.array_equal(again.landmarks_moving.world, first.landmarks_moving.world)
    other = make_pair(scan, brain, lesion=lesion, change="shrink", seed=4)
    assert not np.array_equal(other.fixed.array, first.fixed.array)
    a = write_pair(first, tmp_path / "a")
    b = write_pair(again, tmp_path / "b")
    names = sorted(p.name for p in a.iterdir())
    assert "field_fixed_to_moving.nii.gz" in names and "pair.json" in names
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_written_pair_reads_back(pairs: dict[str, SyntheticPair], tmp_path: Path) -> None:
    pair = pairs["grow"]
    folder = write_pair(pair, tmp_path)
    disp, grid = read_displacement(folder / "field_fixed_to_moving.nii.gz")
    assert grid.meta["convention"] == "itk"
    np.testing.assert_allclose(disp, pair.field_fixed_to_moving_vox, atol=1e-4)
    text = (folder / "landmarks_fixed.csv").read_text().splitlines()[0]
    assert text == "Landmark,X,Y,Z"
    lm = read_landmarks(folder / "landmarks_moving.csv")
    np.testing.assert_allclose(lm.world, pair.landmarks_moving.world, atol=1e-9)


def test_truth_is_a_diffeomorphism_in_mm_and_voxels(pairs: dict[str, SyntheticPair]) -> None:
    pair = pairs["shrink"]
    vox = pair.field_fixed_to_moving_vox
    det = jacobian_determinant(torch.from_numpy(vox)[None])
    assert float(det.min()) > 0
    spacing = np.asarray(pair.fixed.spacing)  # canonical RAS grid: mm = voxels * spacing
    np.testing.assert_allclose(
        pair.field_fixed_to_moving, vox * spacing[:, None, None, None], rtol=1e-5, atol=1e-5
    )
    peak = np.sqrt((pair.field_fixed_to_moving**2).sum(0)).max()
    assert 2.0 - 1e-3 <= peak <= 6.0 + 1e-3


def test_fixed_is_the_pre_scan_warped_by_the_truth(pre: tuple[Volume, Volume, np.ndarray]) -> None:
    scan, brain, lesion = pre
    pair = make_pair(scan, brain, lesion=lesion, change="none", seed=5, intensity_change=False)
    expected = _warp(np.asarray(scan.array), pair.field_fixed_to_moving_vox)
    np.testing.assert_allclose(pair.fixed.array, expected, atol=1e-6)


def test_truth_maps_fixed_landmarks_onto_moving_landmarks(pairs: dict[str, SyntheticPair]) -> None:
    for pair in pairs.values():
        fixed_vox = pair.landmarks_fixed.to_voxel(pair.fixed)
        d_mm = sample_displacement(pair.field_fixed_to_moving, fixed_vox)
        np.testing.assert_allclose(
            pair.landmarks_fixed.world + d_mm, pair.landmarks_moving.world, atol=1e-4
        )
        assert pair.landmarks_fixed.ids == pair.landmarks_moving.ids


def test_landmarks_in_brain_half_near_half_far(pairs: dict[str, SyntheticPair]) -> None:
    for pair in pairs.values():
        n = len(pair.landmarks_fixed)
        assert n == 10
        assert int(pair.landmark_near.sum()) == n // 2
        brain_f = np.asarray(pair.brain_fixed.array, bool)
        brain_m = np.asarray(pair.brain_moving.array, bool)
        fv = np.rint(pair.landmarks_fixed.to_voxel(pair.fixed)).astype(int)
        mv = np.rint(pair.landmarks_moving.to_voxel(pair.moving)).astype(int)
        assert brain_f[tuple(fv.T)].all()
        assert brain_m[tuple(mv.T)].all()
        lesion_any = np.asarray(pair.lesion_fixed.array, bool) | (
            _warp(np.asarray(pair.lesion_moving.array), pair.field_fixed_to_moving_vox) > 0.5
        )
        assert not lesion_any[tuple(fv.T)].any()
        dist = ndi.distance_transform_edt(~lesion_any, sampling=pair.fixed.spacing)[tuple(fv.T)]
        assert (dist[pair.landmark_near] <= NEAR_MM).all()
        assert (dist[~pair.landmark_near] > NEAR_MM).all()
        pts = pair.landmarks_fixed.world
        gaps = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)) + np.eye(n) * 1e9
        assert gaps.min() > 0


def test_change_modes_change_the_lesion_volume(pairs: dict[str, SyntheticPair]) -> None:
    def ml(v: Volume) -> float:
        return float(np.asarray(v.array, bool).sum()) * float(np.prod(v.spacing)) / 1000.0

    pre_ml = ml(pairs["none"].lesion_moving)
    assert ml(pairs["shrink"].lesion_fixed) < 0.8 * pre_ml
    assert ml(pairs["grow"].lesion_fixed) > 1.2 * pre_ml
    assert abs(ml(pairs["none"].lesion_fixed) - pre_ml) < 0.15 * pre_ml
    resect = pairs["resect"]
    cavity = np.asarray(resect.lesion_fixed.array, bool)
    assert ml(resect.lesion_fixed) >= pre_ml * 0.9
    fixed = np.asarray(resect.fixed.array)
    brain = np.asarray(resect.brain_fixed.array, bool)
    # CSF-dark: the cavity is darker than 90 % of the brain and than the tumour was
    assert np.median(fixed[cavity]) < np.quantile(fixed[brain], 0.1)
    pre = np.asarray(resect.moving.array)
    assert np.median(fixed[cavity]) < np.median(pre[np.asarray(resect.lesion_moving.array)])
    for pair in pairs.values():
        assert pair.meta["change"] in ("shrink", "grow", "resect", "none")


def test_bad_input_one_line_errors(pre: tuple[Volume, Volume, np.ndarray]) -> None:
    scan, brain, lesion = pre
    flat = Volume(np.ones((20, 20, 1), np.float32), np.eye(4), name="flat")
    cases = [
        (lambda: make_pair(flat, flat, lesion=None, change="none", seed=0), "3D"),
        (
            lambda: make_pair(scan, brain.with_array(np.zeros(scan.shape, bool)), lesion=lesion,
                              change="grow", seed=0),
            "empty",
        ),
        (lambda: make_pair(scan, brain, lesion=lesion, change="explode", seed=0), "explode"),
        (lambda: make_pair(scan, brain, lesion=None, change="shrink", seed=0), "lesion"),
        (lambda: make_pair(scan, brain, lesion=lesion[:10], change="grow", seed=0), "shape"),
        (lambda: make_pair(np.asarray(scan.array), brain, lesion=lesion, seed=0), "Volume"),  # type: ignore[arg-type]
        (lambda: make_pair(scan, brain, lesion=lesion, seed=0, n_landmarks=1), "n_landmarks"),
        (lambda: make_pair(scan, brain, lesion=lesion, seed=0, peak_mm=(3, 1)), "peak_mm"),
    ]  # fmt: skip
    for call, word in cases:
        with pytest.raises(ValueError, match=word) as info:
            call()
        assert isinstance(info.value, PairError)
        assert "\n" not in str(info.value)
