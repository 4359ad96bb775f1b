"""Tests of core.spatial against analytic answers and MONAI (independent oracle)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_girnet.core.spatial import (
    compose,
    identity_grid,
    integrate,
    jacobian_determinant,
    warp,
)


def smooth_field(shape, ndim, amplitude, seed, batch=1):
    """Random smooth field: coarse noise upsampled (trilinear), peak |u| = amplitude."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn((batch, ndim, *[4] * ndim), generator=g, dtype=torch.float64)
    mode = "bilinear" if ndim == 2 else "trilinear"
    field = torch.nn.functional.interpolate(coarse, size=shape, mode=mode, align_corners=True)
    return (field / field.abs().max() * amplitude).float()


def gaussian_field(shape, amplitude, seed, sigma=6.0):
    """Smooth (C-infinity) random field: Gaussian-filtered noise, peak |u_k| = amplitude voxels."""
    rng = np.random.default_rng(seed)
    comps = [ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap") for _ in shape]
    field = np.stack(comps)
    return torch.from_numpy(field / np.abs(field).max() * amplitude).float()[None]


def textured(shape, seed, batch=1, channels=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((batch, channels, *shape), generator=g)
    ndim = len(shape)
    mode = "bilinear" if ndim == 2 else "trilinear"
    coarse = torch.nn.functional.interpolate(
        torch.rand((batch, channels, *[6] * ndim), generator=g),
        size=shape,
        mode=mode,
        align_corners=True,
    )
    return 0.5 * x + 0.5 * coarse


@pytest.mark.parametrize("shape", [(17, 20), (12, 15, 11)])
def test_identity_grid_holds_voxel_indices(shape):
    grid = identity_grid(shape)
    assert grid.shape == (1, len(shape), *shape)
    idx = tuple(s - 2 for s in shape)
    assert grid[(0, slice(None), *idx)].tolist() == [float(i) for i in idx]


@pytest.mark.parametrize("shape", [(17, 20), (12, 15, 11)])
def test_zero_displacement_returns_input(shape):
    img = textured(shape, 0, batch=2, channels=2)
    disp = torch.zeros((2, len(shape), *shape))
    out = warp(img, disp)
    torch.testing.assert_close(out, img, atol=1e-6, rtol=0)


def test_integer_shift_is_a_shifted_copy_in_the_interior():
    img = textured((14, 16, 12), 1)
    disp = torch.zeros((1, 3, 14, 16, 12))
    disp[:, 0] = 2.0
    disp[:, 2] = -1.0
    out = warp(img, disp)
    # out[i, j, k] = img[i + 2, j, k - 1]
    torch.testing.assert_close(out[0, 0, :-2, :, 1:], img[0, 0, 2:, :, :-1], atol=1e-5, rtol=0)
    # outside the image: zero padding
    assert torch.all(out[0, 0, -2:] == 0)


def test_nearest_warp_keeps_label_values_and_dtype():
    labels = torch.randint(0, 5, (1, 1, 10, 11, 9), generator=torch.Generator().manual_seed(0))
    disp = smooth_field((10, 11, 9), 3, 2.0, seed=3)
    out = warp(labels, disp, mode="nearest")
    assert out.dtype == labels.dtype
    assert set(out.unique().tolist()) <= set(range(5))


def test_batch_items_are_warped_independently():
    img = textured((16, 18), 2, batch=3)
    disp = smooth_field((16, 18), 2, 3.0, seed=4, batch=3)
    out = warp(img, disp)
    for b in range(3):
        torch.testing.assert_close(out[b : b + 1], warp(img[b : b + 1], disp[b : b + 1]))


def test_bad_field_shape_raises_clear_error():
    with pytest.raises(ValueError, match=r"\(B, 3, \*spatial\)"):
        warp(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match="mode"):
        warp(torch.zeros(1, 1, 8, 8), torch.zeros(1, 2, 8, 8), mode="cubic")


@pytest.fixture(scope="module")
def monai_blocks():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from monai.networks.blocks import DVF2DDF, Warp

    return Warp, DVF2DDF


@pytest.mark.parametrize("shape", [(24, 28), (16, 20, 14)])
def test_warp_matches_monai(monai_blocks, shape):
    Warp, _ = monai_blocks
    ndim = len(shape)
    img = textured(shape, 5, batch=2)
    disp = smooth_field(shape, ndim, 4.0, seed=6, batch=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = Warp(mode="bilinear", padding_mode="zeros")(img, disp)
    torch.testing.assert_close(warp(img, disp), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(24, 28), (16, 20, 14)])
def test_integrate_matches_monai_dvf2ddf(monai_blocks, shape):
    _, DVF2DDF = monai_blocks
    ndim = len(shape)
    vel = smooth_field(shape, ndim, 4.0, seed=7, batch=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = DVF2DDF(num_steps=7, mode="bilinear", padding_mode="zeros")(vel)
    torch.testing.assert_close(integrate(vel, steps=7), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("amplitude", [1.0, 2.5, 4.0])
def test_exp_v_composed_with_exp_minus_v_is_identity(amplitude):
    shape = (40, 44, 36)
    vel = gaussian_field(shape, amplitude, seed=8)
    roundtrip = compose(integrate(vel), integrate(-vel))
    # interior: points that never leave the grid (zero padding does not apply)
    m = int(np.ceil(2 * amplitude)) + 1
    err = roundtrip[:, :, m:-m, m:-m, m:-m].norm(dim=1).max().item()
    assert err < 0.05


def test_compose_equals_sequential_warping_for_smooth_fields():
    shape = (30, 32, 28)
    a = gaussian_field(shape, 2.0, seed=9)
    b = gaussian_field(shape, 2.0, seed=10)
    img = torch.from_numpy(ndi.gaussian_filter(np.random.default_rng(11).random(shape), 2.0))
    img = img.float()[None, None]
    once = warp(img, compose(a, b))
    twice = warp(warp(img, a), b)
    err = (once - twice)[..., 5:-5, 5:-5, 5:-5].abs().max().item()
    assert err < 0.02 * float(img.max() - img.min())


@pytest.mark.parametrize("ndim", [2, 3])
def test_jacobian_of_affine_field_is_analytic_determinant(ndim):
    shape = (9, 10, 11)[:ndim]
    rng = np.random.default_rng(12)
    a = np.eye(ndim) + 0.2 * rng.standard_normal((ndim, ndim))
    grid = identity_grid(shape, dtype=torch.float64)[0]
    # displacement u(x) = (A - I) x + t
    u = torch.einsum("ij,j...->i...", torch.from_numpy(a - np.eye(ndim)), grid) + 1.5
    det = jacobian_determinant(u.unsqueeze(0))
    assert det.shape == (1, 1, *shape)
    torch.testing.assert_close(det, torch.full_like(det, float(np.linalg.det(a))))


def test_jacobian_detects_folding():
    disp = torch.zeros(1, 2, 10, 10)
    disp[0, 0, 5:, :] = -3.0  # rows 5.. sample 3 rows back: the map x -> x + u is not monotone
    det = jacobian_determinant(disp)
    assert (det <= 0).any()
    assert torch.all(jacobian_determinant(torch.zeros(1, 3, 5, 5, 5)) == 1)
