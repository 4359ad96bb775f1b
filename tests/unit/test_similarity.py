"""Tests of core.similarity against MONAI and scikit-image (independent oracles)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from skimage.exposure import match_histograms

from napari_girnet.core.similarity import box_sum, histogram_match, lncc, mse, ncc


def textured(shape, seed, batch=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((batch, 1, *shape), generator=g)


@pytest.mark.parametrize("shape", [(21, 18), (11, 12, 10)])
def test_box_sum_equals_brute_force(shape):
    x = textured(shape, 0)
    window = 5
    out = box_sum(x, window)
    arr = np.pad(x[0, 0].numpy().astype(np.float64), window // 2)
    idx = tuple(s // 2 for s in shape)
    brute = arr[tuple(slice(i, i + window) for i in idx)].sum()
    assert out[(0, 0, *idx)].item() == pytest.approx(brute, rel=1e-5)
    # corner: zero padding
    corner = arr[tuple(slice(0, window) for _ in shape)].sum()
    assert out[(0, 0) + (0,) * len(shape)].item() == pytest.approx(corner, rel=1e-5)


@pytest.mark.parametrize("form", ["girnet", "standard"])
def test_lncc_of_identical_textured_images_is_one(form):
    x = textured((20, 22, 18), 1)
    assert lncc(x, x, window=7, eps=1e-5 if form == "standard" else 0.1, form=form).item() == (
        pytest.approx(1.0, abs=1e-4)
    )


def test_lncc_map_shape_range_and_flat_window_behaviour():
    a = textured((24, 20), 2)
    b = textured((24, 20), 3)
    cc = lncc(a, b, window=7, reduction="none")
    assert cc.shape == a.shape
    assert torch.all(cc >= 0) and torch.all(cc <= 1 + 1e-6)
    flat = torch.zeros(1, 1, 24, 20)
    # GIRNet form: flat windows count as a perfect match; standard form: no correlation
    assert lncc(flat, flat, form="girnet").item() == pytest.approx(1.0)
    assert lncc(flat, flat, form="standard", eps=1e-5).item() == pytest.approx(0.0)


def test_girnet_form_rewards_pushing_the_image_out_of_view_standard_form_does_not():
    """Why the CPU presets use the standard form: a blob-shaped "brain" on a zero background,
    compared with a shifted copy of itself, against the same image translated out of the field
    of view (what a degenerate RegNet learned; see core.config)."""
    from napari_girnet.core.spatial import warp

    g = torch.Generator().manual_seed(4)
    brain = torch.zeros(1, 1, 32, 32, 32)
    brain[..., 8:24, 8:24, 8:24] = 0.5 + 0.5 * torch.rand(1, 1, 16, 16, 16, generator=g)
    moved = torch.roll(brain, shifts=1, dims=2)  # a near match: 1 voxel off
    gone = torch.zeros(1, 3, 32, 32, 32)
    gone[:, 0] = 40.0  # sample 40 voxels away: everything left is zero padding
    out_of_view = warp(brain, gone)
    assert out_of_view.abs().max().item() == 0.0
    # GIRNet's form: the shortcut scores better than a near-registration
    assert lncc(brain, out_of_view, 7, 0.1, "girnet") > lncc(brain, moved, 7, 0.1, "girnet")
    # standard form: the shortcut scores zero, the near-registration clearly more
    assert lncc(brain, out_of_view, 7, 0.1, "standard").item() == pytest.approx(0.0, abs=1e-6)
    assert lncc(brain, moved, 7, 0.1, "standard").item() > 0.05


@pytest.mark.parametrize(
    ("shape", "window"), [((32, 28), 7), ((18, 20, 16), 7), ((20, 20, 20), 15)]
)
def test_standard_lncc_matches_monai(shape, window):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from monai.losses import LocalNormalizedCrossCorrelationLoss

    a = textured(shape, 4, batch=2)
    b = 0.6 * a + 0.4 * textured(shape, 5, batch=2)
    ref = LocalNormalizedCrossCorrelationLoss(
        spatial_dims=len(shape),
        kernel_size=window,
        kernel_type="rectangular",
        reduction="mean",
        smooth_nr=0.0,
        smooth_dr=1e-5,
    )(a, b)
    ours = -lncc(a, b, window=window, eps=1e-5, form="standard")
    assert ours.item() == pytest.approx(ref.item(), abs=1e-4)


def test_lncc_gradients_are_finite_and_lncc_runs_outside_autocast():
    a = textured((16, 16, 16), 6).requires_grad_(True)
    b = textured((16, 16, 16), 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        val = lncc(a, b, window=7)
    assert val.dtype == torch.float32
    val.backward()
    assert torch.isfinite(a.grad).all()


def test_lncc_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="differ in shape"):
        lncc(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))


def test_global_ncc_and_mse():
    a = textured((10, 12, 8), 8)
    assert ncc(a, 2 * a + 0.1).item() == pytest.approx(1.0, abs=1e-5)
    assert ncc(a, -a).item() == pytest.approx(-1.0, abs=1e-5)
    assert mse(a, a + 0.5).item() == pytest.approx(0.25)


def _brain_like(shape, seed, gamma):
    rng = np.random.default_rng(seed)
    img = rng.random(shape) ** gamma
    img[: shape[0] // 4] = 0  # background block, like the zero background of brain MRI
    return img.astype(np.float32)


@pytest.mark.parametrize("shape", [(40, 36), (24, 28, 20)])
def test_histogram_match_agrees_with_skimage(shape):
    src = _brain_like(shape, 9, gamma=2.0)
    ref = _brain_like(shape, 10, gamma=0.5) * 0.8 + 0.1 * (np.arange(shape[-1]) / shape[-1])
    ours = histogram_match(torch.from_numpy(src)[None, None], torch.from_numpy(ref)[None, None])
    sk = match_histograms(src, ref)
    value_range = float(ref.max() - ref.min())
    assert np.abs(ours[0, 0].numpy() - sk).max() <= 0.02 * value_range


def test_histogram_match_is_monotone_and_respects_masks():
    src = torch.from_numpy(_brain_like((30, 30), 11, gamma=3.0))[None, None]
    ref = torch.from_numpy(_brain_like((30, 30), 12, gamma=0.3))[None, None]
    out = histogram_match(src, ref)
    order = torch.argsort(src.flatten())
    assert torch.all(torch.diff(out.flatten()[order]) >= -1e-6)
    mask = src > 0.5
    out_m = histogram_match(src, ref, source_mask=mask, reference_mask=ref > 0)
    assert torch.equal(out_m[~mask], src[~mask])
