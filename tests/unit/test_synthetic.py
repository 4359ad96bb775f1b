"""Tests of napari_girnet.data.synthetic: pseudo-pathological cases with ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_girnet.core.spatial import jacobian_determinant, warp
from napari_girnet.data.nifti import read_displacement
from napari_girnet.data.synthetic import (
    LesionPlacementError,
    LesionSource,
    SourceBrain,
    SyntheticError,
    make_case,
    make_cases,
    random_diffeomorphism,
    random_velocity,
    read_case,
    write_case,
)
from napari_girnet.data.volume import Volume

SHAPE = (32, 32, 32)
SPACING = 2.0
AFFINE = np.diag([SPACING, SPACING, SPACING, 1.0])
AFFINE[:3, 3] = -31.0


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny grids: one thread avoids thread-pool overhead on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _ball(center: tuple[float, float, float], radius: float) -> np.ndarray:
    grid = np.indices(SHAPE, dtype=np.float64)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, center, strict=True))
    return d2 <= radius**2


@pytest.fixture(scope="module")
def brain() -> SourceBrain:
    """An ellipsoidal blob brain with a dark core and smooth texture, octant labels."""
    grid = np.indices(SHAPE, dtype=np.float64)
    c = (np.asarray(SHAPE) - 1) / 2.0
    r = np.sqrt(
        ((grid[0] - c[0]) / 12) ** 2 + ((grid[1] - c[1]) / 13) ** 2 + ((grid[2] - c[2]) / 11) ** 2
    )
    inside = r <= 1.0
    rng = np.random.default_rng(0)
    from scipy import ndimage as ndi

    texture = ndi.gaussian_filter(rng.standard_normal(SHAPE), 2.0)
    texture = (texture - texture.min()) / np.ptp(texture)
    image = np.where(inside, 0.35 + 0.4 * r + 0.25 * texture, 0.0)
    image[r < 0.25] = 0.1  # "ventricle"
    image = np.clip(image, 0, 1).astype(np.float32)
    labels = np.zeros(SHAPE, np.int16)
    octant = 1 + (grid[0] > c[0]) + 2 * (grid[1] > c[1]) + 4 * (grid[2] > c[2])
    labels[inside] = octant[inside].astype(np.int16)
    return SourceBrain(
        "blob",
        Volume(image, AFFINE, name="blob"),
        Volume(labels, AFFINE, name="blob labels"),
        Volume(inside, AFFINE, name="blob mask"),
    )


def _lesion(name: str, center: tuple[float, float, float], radius: float) -> LesionSource:
    mask = _ball(center, radius)
    appearance = np.where(_ball((15.5, 15.5, 15.5), 14), 0.6, 0.0).astype(np.float32)
    appearance[mask] = np.linspace(0.05, 0.2, int(mask.sum()), dtype=np.float32)
    return LesionSource(
        name, "ms", Volume(mask, AFFINE, name=name), Volume(appearance, AFFINE, name="app")
    )


@pytest.fixture(scope="module")
def lesion() -> LesionSource:
    return _lesion("inside", (21.0, 15.0, 16.0), 3.5)


@pytest.fixture(scope="module")
def outside() -> LesionSource:
    return _lesion("outside", (1.0, 1.0, 1.0), 4.0)


@pytest.fixture(scope="module")
def case(brain: SourceBrain, lesion: LesionSource):
    return make_case(brain, lesion, seed=3)


def _peak_mm(disp: np.ndarray) -> float:
    return float(np.sqrt(((disp * SPACING) ** 2).sum(axis=0)).max())


def _rewarp(image: np.ndarray, disp: np.ndarray, mode: str = "bilinear") -> np.ndarray:
    out = warp(torch.tensor(image)[None, None], torch.from_numpy(disp)[None], mode=mode)
    return out[0, 0].numpy()


# --------------------------------------------------------------------------- fields
def test_random_velocity_unit_peak_and_deterministic() -> None:
    v1 = random_velocity(SHAPE, 1, 3.0)
    v2 = random_velocity(SHAPE, 1, 3.0)
    assert v1.shape == (3, *SHAPE) and v1.dtype == np.float32
    np.testing.assert_array_equal(v1, v2)
    assert np.sqrt((v1**2).sum(0)).max() == pytest.approx(1.0, abs=1e-6)
    assert np.abs(v1[:, 0]).max() == 0.0  # tapered to 0 at the border
    assert not np.array_equal(v1, random_velocity(SHAPE, 2, 3.0))


@pytest.mark.parametrize(("peak", "seed"), [(2.0, 0), (5.0, 1), (8.0, 2)])
def test_random_diffeomorphism_peak_and_no_folding(peak: float, seed: int) -> None:
    disp = random_diffeomorphism(SHAPE, SPACING, peak, seed)
    assert disp.shape == (3, *SHAPE) and disp.dtype == np.float32
    assert _peak_mm(disp) == pytest.approx(peak, rel=1e-5)
    assert float(jacobian_determinant(torch.from_numpy(disp)[None]).min()) > 0.0


def test_random_diffeomorphism_deterministic() -> None:
    a = random_diffeomorphism(SHAPE, SPACING, 4.0, 7)
    np.testing.assert_array_equal(a, random_diffeomorphism(SHAPE, SPACING, 4.0, 7))
    assert not np.array_equal(a, random_diffeomorphism(SHAPE, SPACING, 4.0, 8))


def test_random_diffeomorphism_bad_arguments() -> None:
    with pytest.raises(SyntheticError):
        random_diffeomorphism(SHAPE, SPACING, 0.0, 0)
    with pytest.raises(SyntheticError):
        random_diffeomorphism(SHAPE, -1.0, 3.0, 0)
    with pytest.raises(SyntheticError, match="fold-free"):
        # a 60 mm peak on a 64 mm grid with a rough velocity cannot stay fold-free
        random_diffeomorphism(SHAPE, SPACING, 60.0, 0, smoothness_mm=2.0, max_tries=1)


# --------------------------------------------------------------------------- cases
def test_case_ground_truth(case, brain: SourceBrain) -> None:
    m = case.manifest
    assert 2.0 <= m["peak_mm"] <= 8.0
    assert _peak_mm(case.field) == pytest.approx(m["peak_mm"], rel=1e-6)
    det = jacobian_determinant(torch.from_numpy(case.field)[None])
    assert float(det.min()) > 0 and m["min_jacobian_det"] == pytest.approx(float(det.min()))
    # the twin is the source brain warped by the stored field
    rewarped = np.clip(_rewarp(brain.image.array, case.field), 0, 1)
    np.testing.assert_allclose(case.healthy.array, rewarped, atol=1e-6)
    labels = _rewarp(brain.labels.array, case.field, mode="nearest")
    np.testing.assert_array_equal(case.labels.array, labels)
    # scan = twin outside the lesion, exactly; the lesion lies inside the brain
    lesion = case.lesion.array
    assert lesion.dtype == np.bool_ and lesion.any()
    np.testing.assert_array_equal(case.scan.array[~lesion], case.healthy.array[~lesion])
    assert not np.any(lesion & ~case.brain_mask.array)
    # pasted lesion intensities: the appearance's dark lesion, histogram-matched -> darker
    assert case.scan.array[lesion].mean() < case.healthy.array[lesion].mean()
    assert m["lesion_volume_mm3"] == pytest.approx(lesion.sum() * SPACING**3)
    assert m["source_brain"] == "blob" and m["lesion_source"] == "inside"
    assert m["lesion_kind"] == "ms" and isinstance(m["flip"], bool)
    assert "healthy(x) = source(x + field(x))" in m["field_convention"]
    for vol in (case.scan, case.lesion, case.healthy, case.brain_mask):
        assert vol.same_grid(brain.image)


def test_flip_mirrors_lesion(brain: SourceBrain, lesion: LesionSource) -> None:
    plain = make_case(brain, lesion, seed=11, peak_mm=2.0, flip=False)
    mirrored = make_case(brain, lesion, seed=11, peak_mm=2.0, flip=True)
    assert not plain.manifest["flip"] and mirrored.manifest["flip"]
    np.testing.assert_array_equal(plain.field, mirrored.field)  # same draws otherwise
    expected = np.flip(lesion.mask.array, axis=0) & mirrored.brain_mask.array
    np.testing.assert_array_equal(mirrored.lesion.array, expected)


def test_lesion_outside_brain_raises(brain: SourceBrain, outside: LesionSource) -> None:
    with pytest.raises(LesionPlacementError, match="inside the deformed brain") as err:
        make_case(brain, outside, seed=0)
    assert isinstance(err.value, ValueError)


def test_grid_mismatch_raises(brain: SourceBrain) -> None:
    shifted = AFFINE.copy()
    shifted[0, 3] += 5.0
    mask = _ball((16, 16, 16), 3)
    other = LesionSource(
        "shifted", "ms", Volume(mask, shifted), Volume(mask.astype(np.float32), shifted)
    )
    with pytest.raises(SyntheticError, match="grid"):
        make_case(brain, other, seed=0)
    with pytest.raises(SyntheticError, match="kind"):
        LesionSource("x", "tumour", Volume(mask, AFFINE), Volume(mask * 1.0, AFFINE))
    with pytest.raises(SyntheticError, match="empty"):
        LesionSource("x", "ms", Volume(mask & False, AFFINE), Volume(mask * 1.0, AFFINE))


def test_write_read_roundtrip(case, brain: SourceBrain, tmp_path: Path) -> None:
    folder = write_case(case, tmp_path / "c")
    names = {p.name for p in folder.iterdir()}
    assert {
        "scan.nii.gz",
        "lesion.nii.gz",
        "healthy.nii.gz",
        "labels.nii.gz",
        "field.nii.gz",
        "brain_mask.nii.gz",
        "case.json",
    } <= names
    manifest = json.loads((folder / "case.json").read_text())
    assert manifest["convention"].startswith("field.nii.gz: displacement in voxels")
    assert manifest["convention"].endswith("source brain = blob")
    assert manifest["files"]["field"] == "field.nii.gz"

    disp, grid = read_displacement(folder / "field.nii.gz")
    assert grid.meta["convention"] == "voxel"
    np.testing.assert_array_equal(disp, case.field)  # float32 voxel field, exact

    back = read_case(folder)
    np.testing.assert_array_equal(back.scan.array, case.scan.array)
    np.testing.assert_array_equal(back.lesion.array, case.lesion.array)
    np.testing.assert_array_equal(back.brain_mask.array, case.brain_mask.array)
    np.testing.assert_array_equal(back.labels.array, case.labels.array)
    np.testing.assert_array_equal(back.field, case.field)
    assert back.scan.same_grid(case.scan)
    assert back.manifest == case.manifest
    # warping the source brain with the field read from disk reproduces the twin on disk
    rewarped = np.clip(_rewarp(brain.image.array, back.field), 0, 1)
    np.testing.assert_allclose(back.healthy.array, rewarped, atol=1e-5)


def test_read_case_errors(tmp_path: Path) -> None:
    with pytest.raises(SyntheticError, match="not a pseudo case"):
        read_case(tmp_path)
    (tmp_path / "case.json").write_text("{not json")
    with pytest.raises(SyntheticError, match="manifest"):
        read_case(tmp_path)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_make_cases_deterministic(
    brain: SourceBrain, lesion: LesionSource, outside: LesionSource, tmp_path: Path
) -> None:
    lesions = [outside, lesion]  # the outside lesion always fails and is skipped
    a = make_cases(tmp_path / "a", 2, 5, [brain], lesions)
    make_cases(tmp_path / "b", 2, 5, [brain], lesions)
    assert [p.name for p in a] == ["case_000", "case_001"]
    bytes_a, bytes_b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert bytes_a.keys() == bytes_b.keys() and len(bytes_a) == 14
    assert bytes_a == bytes_b
    for path in a:
        m = json.loads((path / "case.json").read_text())
        assert m["lesion_source"] == "inside" and m["batch_seed"] == 5
        assert 2.0 <= m["peak_mm"] <= 8.0
    c = make_cases(tmp_path / "c", 1, 6, [brain], lesions)
    assert (c[0] / "scan.nii.gz").read_bytes() != bytes_a["case_000/scan.nii.gz"]


def test_make_cases_gives_up(brain: SourceBrain, outside: LesionSource, tmp_path: Path) -> None:
    with pytest.raises(SyntheticError, match="no lesion fits"):
        make_cases(tmp_path, 1, 0, [brain], [outside], max_attempts=2)


def test_atlas_source_with_bundled_lesion(tmp_path: Path) -> None:
    """Ground truth (b): with the atlas as source, the stored field is the exact phi_ts."""
    from napari_girnet.data.atlas import load_atlas
    from napari_girnet.data.synthetic import atlas_source_brain
    from napari_girnet.datasets import lesion_library

    brain = atlas_source_brain("2mm")
    assert brain.labels is None and brain.name == "mni152_2009a_sym_2mm"
    source = next(s for s in lesion_library(kinds=("ms",)) if s.name == "ms19")
    case = make_case(brain, source, seed=1)
    atlas = load_atlas("2mm")
    truth = np.clip(_rewarp(np.array(atlas.image.array), case.field), 0, 1)
    np.testing.assert_allclose(case.healthy.array, truth, atol=1e-6)
    lesion = case.lesion.array
    assert lesion.sum() > 1000 and not np.any(lesion & ~case.brain_mask.array)
    np.testing.assert_array_equal(case.scan.array[~lesion], case.healthy.array[~lesion])
    assert case.labels is None
    back = read_case(write_case(case, tmp_path / "atlas_case"))
    assert back.labels is None and not (tmp_path / "atlas_case" / "labels.nii.gz").exists()
    assert back.manifest["source_brain"] == "mni152_2009a_sym_2mm"
