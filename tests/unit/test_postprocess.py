"""Unit tests for napari_girnet.detection.refine (random-walker refinement)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from napari_girnet.detection.refine import random_walker_refine
from napari_girnet.evaluation.metrics import dice


def _ball(shape, center, radius):
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, center, strict=True)) <= radius**2


def _noisy_blob(shape, center, radius, seed):
    rng = np.random.default_rng(seed)
    truth = _ball(shape, center, radius)
    image = 0.3 + 0.4 * truth + rng.normal(0.0, 0.04, size=shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32), truth


@pytest.mark.parametrize(
    ("shape", "center", "radius", "pred_radius"),
    [
        ((40, 40, 40), (20, 20, 20), 8, 12),  # 3D over-segmentation
        ((40, 40, 40), (20, 20, 20), 8, 5),  # 3D under-segmentation
        ((64, 64), (30, 34), 12, 17),  # 2D over-segmentation
        ((64, 64), (30, 34), 12, 7),  # 2D under-segmentation
    ],
)
def test_random_walker_improves_dice(shape, center, radius, pred_radius):
    image, truth = _noisy_blob(shape, center, radius, seed=len(shape) + pred_radius)
    probability = 0.8 * _ball(shape, center, pred_radius)
    before = dice(probability > 0.5, truth)
    refined = random_walker_refine(image, probability, margin=10)
    assert refined.dtype == np.bool_ and refined.shape == truth.shape
    after = dice(refined, truth)
    assert after > 0.9
    assert after > before + 0.1


def test_random_walker_crop_keeps_outside_false():
    image, truth = _noisy_blob((48, 48), (12, 12), 5, seed=0)
    image[40:, 40:] = 0.7  # bright patch far from the prediction, outside the crop
    probability = _ball((48, 48), (12, 12), 7).astype(float)
    refined = random_walker_refine(image, probability, margin=4)
    assert not refined[20:, :].any() and not refined[:, 20:].any()
    assert dice(refined, truth) > 0.85


def test_random_walker_empty_prediction(caplog):
    image = np.random.default_rng(0).random((10, 12, 14))
    with caplog.at_level(logging.WARNING, logger="napari_girnet.detection.refine"):
        out = random_walker_refine(image, np.full(image.shape, 0.2))
    assert out.shape == image.shape and out.dtype == np.bool_ and not out.any()
    assert "empty" in caplog.text


def test_random_walker_degenerate_cases():
    image = np.random.default_rng(0).random((12, 12))
    # prediction fills everything: no background seeds -> returned as is
    full = random_walker_refine(image, np.ones((12, 12)))
    assert full.all()
    # constant image -> returned as is
    prob = np.zeros((12, 12))
    prob[3:8, 3:8] = 1.0
    const = random_walker_refine(np.full((12, 12), 0.5), prob)
    np.testing.assert_array_equal(const, prob > 0.5)


def test_random_walker_bad_input():
    img = np.zeros((8, 8, 8))
    prob = np.zeros((8, 8, 8))
    with pytest.raises(ValueError, match="same shape"):
        random_walker_refine(img, prob[:-1])
    with pytest.raises(ValueError, match="image: expected a 2D or 3D"):
        random_walker_refine(np.zeros(8), np.zeros(8))
    bad = prob.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="probability: contains NaN"):
        random_walker_refine(img, bad)
    with pytest.raises(ValueError, match="fg_fraction"):
        random_walker_refine(img, prob, fg_fraction=0.0)
    with pytest.raises(ValueError, match="erosion_size"):
        random_walker_refine(img, prob, erosion_size=1)
    with pytest.raises(ValueError, match="margin"):
        random_walker_refine(img, prob, margin=-1)
    with pytest.raises(ValueError, match="mode"):
        random_walker_refine(img, prob, mode="fast")
    with pytest.raises(ValueError, match="beta"):
        random_walker_refine(img, prob, beta=0.0)
