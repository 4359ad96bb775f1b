"""The atlas-outlier lesion detector on images whose lesions are known by construction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_girnet.core.config import ConfigError, preset
from napari_girnet.detection.outlier import atlas_outlier_mask, mirror_left_right
from napari_girnet.evaluation.metrics import dice

SHAPE = (48, 56, 48)
# 2 mm grid whose world x = 0 is the middle of axis 0: voxel i and 47 - i are mirror images
AFFINE = np.array([[2.0, 0, 0, -47.0], [0, 2.0, 0, -55.0], [0, 0, 2.0, -47.0], [0, 0, 0, 1]])
DATA = Path(__file__).resolve().parents[1] / "data"


def _ball(center: tuple[int, int, int], radius: float) -> np.ndarray:
    grid = np.indices(SHAPE)
    c = np.asarray(center)[:, None, None, None]
    return ((grid - c) ** 2).sum(0) <= radius**2


@pytest.fixture(scope="module")
def brain_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(healthy reference, brain mask, noise): textured 'brain' on an ellipsoid."""
    rng = np.random.default_rng(3)
    grid = np.indices(SHAPE).astype(float)
    c = (np.asarray(SHAPE, float)[:, None, None, None] - 1) / 2
    r = np.asarray([21, 25, 21], float)[:, None, None, None]
    brain = (((grid - c) / r) ** 2).sum(0) <= 1.0
    texture = ndimage.gaussian_filter(rng.normal(size=SHAPE), 1.5)
    healthy = np.where(brain, 0.6 + 0.1 * texture / texture.std(), 0.0)
    # the scan's own anatomy differs from the atlas: smooth mismatch (what registration leaves)
    # plus acquisition noise
    mismatch = ndimage.gaussian_filter(rng.normal(size=SHAPE), 2.0)
    noise = 0.06 * mismatch / mismatch.std() + 0.03 * rng.normal(size=SHAPE)
    return healthy, brain, np.where(brain, noise, 0.0)


def test_finds_a_hypointense_lesion(brain_pair):
    healthy, brain, noise = brain_pair
    lesion = _ball((14, 30, 24), 8)
    scan = np.clip(healthy + noise - 0.3 * lesion, 0, 1) * brain
    res = atlas_outlier_mask(scan, healthy, brain, 2.0, hysteresis=1.0)
    assert dice(res.mask, lesion) > 0.7
    assert res.asymmetry_threshold is None
    with_asym = atlas_outlier_mask(scan, healthy, brain, 2.0, hysteresis=1.0, affine=AFFINE)
    assert dice(with_asym.mask, lesion) > 0.7 and with_asym.asymmetry_threshold is not None
    assert res.mask.dtype == bool and res.mask.shape == SHAPE
    # the score is a z-score: zero outside the eroded brain, large inside the lesion
    assert np.all(res.score[~brain] == 0)
    assert np.median(res.score[lesion]) > 5
    # the probability map is consistent with the mask
    np.testing.assert_array_equal(res.probability > 0.5, res.mask)
    assert res.probability.min() >= 0 and res.probability.max() <= 1
    assert res.threshold >= 0.05  # the contrast floor: a near-perfect reference has a tiny MAD


def test_mirror_left_right_swaps_hemispheres():
    vol = np.zeros(SHAPE)
    vol[10, 20, 30] = 1.0
    mirrored = mirror_left_right(vol, AFFINE)
    assert mirrored[37, 20, 30] == pytest.approx(1.0) and mirrored.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(mirror_left_right(mirrored, AFFINE), vol, atol=1e-12)
    with pytest.raises(ValueError, match="4x4"):
        mirror_left_right(vol, np.eye(3))


def test_asymmetry_rejects_departures_present_on_both_sides(brain_pair):
    """Anatomy unlike the atlas on both sides (e.g. enlarged ventricles) is not a lesion."""
    healthy, brain, noise = brain_pair
    pair = _ball((14, 24, 24), 6) | _ball((33, 24, 24), 6)  # mirror images of each other
    one_sided = _ball((16, 38, 30), 6)
    scan = np.clip(healthy + noise - 0.3 * (pair | one_sided), 0, 1) * brain
    plain = atlas_outlier_mask(scan, healthy, brain, 2.0, hysteresis=1.0, largest_only=False)
    assert (plain.mask & pair).sum() > 0.5 * pair.sum()
    asym = atlas_outlier_mask(
        scan, healthy, brain, 2.0, hysteresis=1.0, affine=AFFINE, largest_only=False
    )
    assert (asym.mask & pair).sum() < 0.05 * pair.sum()
    assert dice(asym.mask, one_sided) > 0.6


def test_polarity_selects_dark_or_bright_departures(brain_pair):
    healthy, brain, noise = brain_pair
    dark = _ball((14, 26, 24), 7)
    bright = _ball((34, 38, 28), 7)
    scan = np.clip(healthy + noise - 0.3 * dark + 0.3 * bright, 0, 1) * brain
    hypo = atlas_outlier_mask(scan, healthy, brain, 2.0, hysteresis=1.0, polarity="hypo")
    hyper = atlas_outlier_mask(scan, healthy, brain, 2.0, hysteresis=1.0, polarity="hyper")
    both = atlas_outlier_mask(
        scan, healthy, brain, 2.0, hysteresis=1.0, polarity="both", largest_only=False
    )
    assert dice(hypo.mask, dark) > 0.6 and not (hypo.mask & bright).any()
    assert dice(hyper.mask, bright) > 0.6 and not (hyper.mask & dark).any()
    assert dice(both.mask, dark | bright) > 0.6


def test_largest_only_keeps_the_biggest_lesion_and_drops_specks(brain_pair):
    healthy, brain, noise = brain_pair
    big = _ball((14, 26, 24), 8)
    small = _ball((34, 40, 26), 4)
    scan = np.clip(healthy + noise - 0.3 * (big | small), 0, 1) * brain
    one = atlas_outlier_mask(scan, healthy, brain, 2.0, hysteresis=1.0)
    assert dice(one.mask, big) > 0.7 and not (one.mask & small).any()
    assert one.components >= 2
    every = atlas_outlier_mask(scan, healthy, brain, 2.0, hysteresis=1.0, largest_only=False)
    assert (every.mask & small).sum() > 0.5 * small.sum()
    # a minimum volume above the small lesion's drops it even when all components are kept
    vol_small = small.sum() * 8.0
    big_only = atlas_outlier_mask(
        scan, healthy, brain, 2.0, largest_only=False, min_volume_mm3=2 * vol_small
    )
    assert not (big_only.mask & small).any()


def test_healthy_scan_gives_little_or_nothing(brain_pair):
    healthy, brain, noise = brain_pair
    res = atlas_outlier_mask(
        np.clip(healthy + noise, 0, 1) * brain, healthy, brain, 2.0, hysteresis=1.0
    )
    assert res.mask.sum() < 0.01 * brain.sum()


def test_hysteresis_grows_the_lesion_into_its_weaker_rim(brain_pair):
    healthy, brain, noise = brain_pair
    core = _ball((14, 28, 24), 5)
    lesion = _ball((14, 28, 24), 9)
    scan = np.clip(healthy + noise - 0.35 * core - 0.12 * (lesion & ~core), 0, 1) * brain
    strict = atlas_outlier_mask(scan, healthy, brain, 2.0, affine=AFFINE, hysteresis=1.0)
    grown = atlas_outlier_mask(scan, healthy, brain, 2.0, affine=AFFINE, hysteresis=0.5)
    assert strict.mask.sum() < 0.6 * lesion.sum()
    assert grown.mask.sum() > strict.mask.sum()
    assert dice(grown.mask, lesion) > dice(strict.mask, lesion)
    # growing never adds components that have no strong core
    assert (grown.mask & strict.mask).sum() == strict.mask.sum()


def test_bad_inputs_raise_clear_errors(brain_pair):
    healthy, brain, _ = brain_pair
    with pytest.raises(ValueError, match="same grid"):
        atlas_outlier_mask(healthy[:-1], healthy, brain)
    bad = healthy.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        atlas_outlier_mask(bad, healthy, brain)
    with pytest.raises(ValueError, match="brain mask is empty"):
        atlas_outlier_mask(healthy, healthy, np.zeros_like(brain))
    with pytest.raises(ValueError, match="polarity"):
        atlas_outlier_mask(healthy, healthy, brain, polarity="dark")
    with pytest.raises(ValueError, match="2D or 3D"):
        atlas_outlier_mask(healthy[None], healthy[None], brain[None])


def test_finds_the_real_glioma_against_the_histogram_matched_atlas():
    """Real data: the TCGA glioma T1 fixture, affinely aligned to the atlas at 4 mm."""
    import torch

    from napari_girnet.core.similarity import histogram_match
    from napari_girnet.data.atlas import load_atlas
    from napari_girnet.data.nifti import read_nifti
    from napari_girnet.data.preprocess import prepare_scan, to_working_grid

    atlas = load_atlas("4mm")
    prepared = prepare_scan(read_nifti(DATA / "glioma_t1_3mm.nii.gz"), atlas)
    truth = read_nifti(DATA / "glioma_tumor_3mm.nii.gz").canonical()
    truth = to_working_grid(truth, atlas, prepared.alignment, order=0).array > 0
    scan = torch.from_numpy(np.asarray(prepared.image.array, np.float32))[None, None]
    ref = torch.from_numpy(np.array(atlas.image.array, np.float32))[None, None]
    brain = torch.from_numpy(np.asarray(prepared.mask.array, bool))[None, None]
    healthy = histogram_match(ref, scan, source_mask=ref > 0, reference_mask=brain) * brain
    res = atlas_outlier_mask(
        scan[0, 0].numpy(),
        healthy[0, 0].numpy(),
        brain[0, 0].numpy(),
        4.0,
        affine=np.asarray(atlas.image.affine),
    )
    assert dice(res.mask, truth) > 0.55
    assert 0.5 < res.mask.sum() / truth.sum() < 1.5


def test_inference_config_validates_and_round_trips():
    cfg = preset("cpu-2mm")
    assert cfg.inference.detector == "auto" and cfg.inference.refine
    changed = cfg.override(inference={"detector": "atlas-outlier", "outlier_k_mad": 2.0})
    again = type(cfg).from_json(changed.to_json())
    assert again.inference.detector == "atlas-outlier" and again.inference.outlier_k_mad == 2.0
    with pytest.raises(ConfigError, match="detector"):
        cfg.override(inference={"detector": "magic"})
    with pytest.raises(ConfigError, match="outlier_passes"):
        cfg.override(inference={"outlier_passes": 3})
    # configs stored before the section existed still load, with the defaults
    data = cfg.to_dict()
    del data["inference"]
    assert type(cfg).from_dict(data).inference == cfg.inference
