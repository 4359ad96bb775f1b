"""Tests of napari_girnet.datasets: the bundled real data and its public API."""

from __future__ import annotations

import numpy as np
import pytest

from napari_girnet import datasets as ds
from napari_girnet.data.atlas import working_grid
from napari_girnet.data.nifti import read_nifti

SHAPE, AFFINE = working_grid(2.0, 16)  # the "2mm" atlas grid, without loading nilearn

IMAGES = ["colin27_t1.nii.gz", "ms07_t1.nii.gz", "ms19_t1.nii.gz", "glioma_t1.nii.gz"]
MASKS = [
    "ms07_lesion.nii.gz",
    "ms19_lesion.nii.gz",
    "glioma_tumor.nii.gz",
    *[f"ms_masks/patient{i:02d}.nii.gz" for i in range(1, 21)],
]


def test_grid_is_the_2mm_atlas_grid() -> None:
    assert SHAPE == (80, 96, 80)


@pytest.mark.parametrize("rel", [*IMAGES, *MASKS, "colin27_aal.nii.gz"])
def test_bundled_file_grid_and_content(rel: str) -> None:
    vol = read_nifti(ds.datasets_dir() / rel)
    assert vol.shape == SHAPE
    np.testing.assert_allclose(vol.affine, AFFINE, atol=1e-5)
    assert vol.array.dtype == np.uint8
    if rel in MASKS:
        assert set(np.unique(vol.array)) == {0, 1}
    elif rel in IMAGES:
        assert vol.array.max() == 255 and (vol.array > 0).mean() > 0.2


def test_no_unexpected_files_and_small() -> None:
    root = ds.datasets_dir()
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    expected = {*IMAGES, *MASKS, "colin27_aal.nii.gz", "aal_labels.txt", "LICENSES.md"}
    assert expected <= set(files)
    assert sum((root / f).stat().st_size for f in files) < 4 * 1024 * 1024


def test_licenses_mention_every_file() -> None:
    root = ds.datasets_dir()
    text = (root / "LICENSES.md").read_text(encoding="utf-8")
    for path in root.rglob("*"):
        if path.is_file() and path.name != "LICENSES.md":
            assert f"`{path.relative_to(root).as_posix()}`" in text, path
    for needle in ("Tzourio-Mazoyer", "Lesjak", "CC BY 3.0", "Apache-2.0", "CC-BY", "McGill"):
        assert needle in text
    for name in ("ms-lesions-LICENSE.txt", "glioma-LICENSE-Apache-2.0.txt"):
        assert (root / "licenses" / name).is_file()


@pytest.mark.parametrize("name", ds.SAMPLES)
def test_load_sample(name: str) -> None:
    sample = ds.load_sample(name)
    assert sample.name == name and sample.description and sample.licence
    assert sample.scan.array.dtype == np.float32 and sample.scan.shape == SHAPE
    assert sample.scan.array.min() >= 0.0 and sample.scan.array.max() == pytest.approx(1.0)
    assert sample.truth is not None and sample.truth.array.dtype == np.bool_
    assert sample.truth.array.any() and sample.truth.same_grid(sample.scan)
    assert not sample.scan.array.flags.writeable  # cached and shared
    assert ds.load_sample(name) is sample


def test_load_sample_unknown_name() -> None:
    with pytest.raises(ValueError, match="glioma, ms07, ms19"):
        ds.load_sample("brats")


def test_colin27_and_aal_names() -> None:
    image, labels = ds.load_colin27()
    assert image.array.dtype == np.float32 and labels.array.dtype == np.int16
    assert labels.same_grid(image)
    names = ds.aal_names()
    assert len(names) == 116 and names[1] == "Precentral_L"
    present = set(np.unique(labels.array)) - {0}
    assert present <= set(names) and len(present) > 100
    brain = ds.colin27_source_brain()
    assert brain.name == "colin27" and brain.labels is labels


def test_lesion_library() -> None:
    lib = ds.lesion_library()
    assert [s.name for s in lib] == [f"ms{i:02d}" for i in range(1, 21)] + ["glioma"]
    assert [s.kind for s in lib].count("glioma") == 1
    assert [s.name for s in ds.lesion_library(kinds=("glioma",))] == ["glioma"]
    kept = ds.lesion_library(exclude=("glioma", "ms07"))
    assert len(kept) == 19 and {"glioma", "ms07"}.isdisjoint(s.name for s in kept)
    with pytest.raises(ValueError, match="unknown lesion sources"):
        ds.lesion_library(exclude=("ms99",))
    with pytest.raises(ValueError, match="unknown lesion kinds"):
        ds.lesion_library(kinds=("stroke",))
    for source in lib:
        assert source.mask.array.any() and source.mask.same_grid(source.appearance)
        assert source.appearance.array.dtype == np.float32


def test_lesion_appearance_from_donor() -> None:
    """Masks without a T1: donor T1 outside the mask, donor lesion intensities inside."""
    by_name = {s.name: s for s in ds.lesion_library()}
    own = ds.load_sample("ms07")
    assert by_name["ms07"].appearance is own.scan
    source = by_name["ms01"]
    assert ds.MS_APPEARANCE_DONOR["01"] == "07" and "patient 07's lesions" in source.description
    mask = source.mask.array
    np.testing.assert_array_equal(source.appearance.array[~mask], own.scan.array[~mask])
    donor_values = own.scan.array[own.truth.array & (own.scan.array > 0)]
    inside = source.appearance.array[mask]
    assert donor_values.min() - 1e-6 <= inside.min() and inside.max() <= donor_values.max() + 1e-6
    assert abs(float(np.median(inside)) - float(np.median(donor_values))) < 0.05
