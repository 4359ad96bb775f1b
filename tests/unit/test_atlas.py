"""Tests of napari_girnet.data.atlas (the nilearn MNI152 2009a atlas and the working grids)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_girnet.data.atlas import (
    ATLAS_CROP_CENTER_VOXEL,
    ATLAS_PRESETS,
    Atlas,
    load_atlas,
    load_atlas_full,
    pad_to_multiple,
    working_grid,
)
from napari_girnet.data.volume import Volume


def _centre(volume: Volume) -> np.ndarray:
    return volume.voxel_to_world((np.asarray(volume.shape) - 1) / 2.0)[0]


@pytest.fixture(scope="module")
def full() -> Atlas:
    return load_atlas_full()


def test_full_atlas_grid(full: Atlas) -> None:
    assert full.shape == (197, 233, 189)
    assert full.image.is_canonical
    np.testing.assert_allclose(full.affine[:3, 3], [-98, -134, -72])
    np.testing.assert_allclose(full.image.spacing, [1, 1, 1])
    assert full.mask.array.dtype == np.bool_
    assert full.image.array.dtype == np.float32


@pytest.mark.parametrize(
    ("preset", "shape", "spacing"), [("1mm", (160, 192, 144), 1.0), ("2mm", (80, 96, 80), 2.0)]
)
def test_preset_shapes(preset: str, shape: tuple[int, int, int], spacing: float) -> None:
    atlas = load_atlas(preset)
    assert atlas.preset == preset
    assert atlas.shape == shape
    assert atlas.mask.shape == shape
    assert atlas.image.same_grid(atlas.mask)
    np.testing.assert_allclose(atlas.image.spacing, spacing)
    assert all(n % 16 == 0 for n in atlas.shape)
    assert atlas.image.is_canonical


def test_crop_centre_is_atlas_voxel_98_116_85(full: Atlas) -> None:
    crop = load_atlas("1mm")
    target = full.image.voxel_to_world(ATLAS_CROP_CENTER_VOXEL)[0]
    np.testing.assert_allclose(target, [0, -18, 13])
    assert np.all(np.abs(_centre(crop.image) - target) <= 0.5 + 1e-9)
    # GIRNet's MONAI SpatialCrop: voxel (18, 20, 13) of the 1 mm grid is voxel (0, 0, 0)
    np.testing.assert_allclose(crop.affine, full.affine @ _translation([18, 20, 13]))


def test_1mm_preset_is_exact_crop(full: Atlas) -> None:
    crop = load_atlas("1mm")
    sl = (slice(18, 178), slice(20, 212), slice(13, 157))
    np.testing.assert_array_equal(crop.image.array, full.image.array[sl])
    np.testing.assert_array_equal(crop.mask.array, full.mask.array[sl])
    # the crop keeps (almost) all the brain
    assert crop.mask.array.sum() > 0.99 * full.mask.array.sum()


def test_2mm_grid_centre_and_padding() -> None:
    one, two = load_atlas("1mm"), load_atlas("2mm")
    np.testing.assert_allclose(_centre(two.image), _centre(one.image), atol=1e-9)

    # voxel-edge boxes: same in x and y, z extended by 4 voxels = 8 mm at each end
    def edges(vol: Volume) -> np.ndarray:
        lo = vol.voxel_to_world([-0.5, -0.5, -0.5])[0]
        hi = vol.voxel_to_world(np.asarray(vol.shape) - 0.5)[0]
        return np.stack([lo, hi])

    e1, e2 = edges(one.image), edges(two.image)
    np.testing.assert_allclose(e2[:, :2], e1[:, :2])
    np.testing.assert_allclose(e2[:, 2], e1[:, 2] + [-8, 8])


@pytest.mark.parametrize("preset", ["1mm", "2mm"])
def test_image_range_and_mask(preset: str) -> None:
    atlas = load_atlas(preset)
    image, mask = atlas.image.array, atlas.mask.array
    assert image.dtype == np.float32 and mask.dtype == np.bool_
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert np.all(image[~mask] == 0.0)
    assert image[mask].max() > 0.9
    # brain volume preserved across resolutions (mm^3)
    volume_mm3 = mask.sum() * np.prod(atlas.image.spacing)
    assert volume_mm3 == pytest.approx(load_atlas("1mm").mask.array.sum(), rel=0.02)


def test_full_image_is_masked_template(full: Atlas) -> None:
    # the raw template is non-zero (up to 0.2) outside the mask; the atlas image is not
    assert np.all(full.image.array[~full.mask.array] == 0.0)
    inside = full.image.array[full.mask.array]
    assert inside.min() == pytest.approx(0.0, abs=1e-6)
    assert inside.max() == pytest.approx(1.0, abs=1e-6)


def test_2mm_is_block_average_of_1mm(full: Atlas) -> None:
    two = load_atlas("2mm")
    # 2 mm voxel (40, 48, 40): centre between 1 mm voxels; interior of the brain
    ijk = np.array([40, 48, 40])
    world = two.image.voxel_to_world(ijk)[0]
    lo = np.floor(full.image.world_to_voxel(world)[0]).astype(int)
    block = full.image.array[lo[0] : lo[0] + 2, lo[1] : lo[1] + 2, lo[2] : lo[2] + 2]
    assert two.mask.array[tuple(ijk)]
    assert two.image.array[tuple(ijk)] == pytest.approx(block.mean(), abs=1e-5)


def test_load_atlas_cached_and_readonly() -> None:
    assert load_atlas("2mm") is load_atlas("2mm")
    assert load_atlas() is load_atlas(preset="2mm")
    assert load_atlas_full() is load_atlas_full()
    with pytest.raises(ValueError, match="read-only"):
        load_atlas("2mm").image.array[0, 0, 0] = 1.0


def test_unknown_preset_lists_valid_ones() -> None:
    for bad in ("3 mm", "fine", "-2mm", "0mm"):
        with pytest.raises(ValueError, match="1mm") as info:
            load_atlas(bad)
        for name in ATLAS_PRESETS:
            assert name in str(info.value)


def test_any_resolution_preset_gives_the_same_world_box() -> None:
    coarse = load_atlas("6mm")
    assert coarse.shape == (32, 32, 32)
    fine = load_atlas("2mm")
    centre = lambda a: a.affine[:3, :3] @ ((np.asarray(a.shape) - 1) / 2) + a.affine[:3, 3]  # noqa: E731
    np.testing.assert_allclose(centre(coarse), centre(fine), atol=1e-6)
    assert coarse.mask.array.any() and coarse.image.array.max() <= 1.0


def test_working_grid_generic() -> None:
    shape, affine = working_grid(3.0)
    assert shape == (64, 64, 48)
    centre = affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0) + affine[:3, 3]
    np.testing.assert_allclose(centre, [-0.5, -18.5, 12.5])
    shape1, _ = working_grid(3.0, multiple=1)
    assert shape1 == (54, 64, 48)
    assert working_grid(1.0)[0] == (160, 192, 144)
    assert working_grid(2.0)[0] == (80, 96, 80)
    with pytest.raises(ValueError):
        working_grid(0.0)
    with pytest.raises(ValueError):
        working_grid(2.0, multiple=0)


def _translation(ijk) -> np.ndarray:
    t = np.eye(4)
    t[:3, 3] = ijk
    return t


def test_pad_to_multiple_keeps_world_positions() -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(1, 100, size=(5, 7, 9)).astype(np.int16)
    angle = np.radians(20)
    affine = np.array(
        [
            [-2.0 * np.cos(angle), -1.5 * np.sin(angle), 0, 30.0],
            [-2.0 * np.sin(angle), 1.5 * np.cos(angle), 0, -12.0],
            [0, 0, 3.0, 7.0],
            [0, 0, 0, 1],
        ]
    )
    vol = Volume(array, affine, name="test")
    padded = pad_to_multiple(vol, 8)
    assert padded.shape == (8, 8, 16)
    assert padded.array.dtype == np.int16
    before = np.array([1, 0, 3])  # (8-5)//2, (8-7)//2, (16-9)//2
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij"), -1)
    ijk = ijk.reshape(-1, 3)
    np.testing.assert_allclose(padded.voxel_to_world(ijk + before), vol.voxel_to_world(ijk))
    sl = tuple(slice(b, b + n) for b, n in zip(before, vol.shape, strict=True))
    np.testing.assert_array_equal(padded.array[sl], array)
    assert padded.array.sum() == array.sum()  # new voxels are 0
    assert pad_to_multiple(padded, 8) is padded
