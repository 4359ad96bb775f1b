"""Raw-scan preprocessing: skull-stripped detection, brain extraction, N4, mask-volume guard."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest

from napari_girnet.data.nifti import read_nifti
from napari_girnet.data.preprocess import brain_mask
from napari_girnet.data.skullstrip import (
    SkullStripError,
    check_mask_volume,
    deepbet_available,
    extract_brain,
    is_skull_stripped,
    n4_bias_correct,
    preprocess_raw,
    resolve_method,
)
from napari_girnet.data.volume import Volume

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def stripped() -> Volume:
    """Colin27 ch2bet (skull-stripped), 3 mm."""
    return read_nifti(DATA / "colin27_3mm.nii.gz", name="colin27 3mm")


@pytest.fixture(scope="module")
def raw() -> Volume:
    """Colin27 ch2 (with skull), 3 mm, same grid as ``stripped``."""
    return read_nifti(DATA / "colin27_raw_3mm.nii.gz", name="colin27 raw 3mm")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _cv(values: np.ndarray) -> float:
    return float(values.std() / values.mean())


# --------------------------------------------------------------------------- detection
def test_stripped_scan_is_recognised(stripped: Volume) -> None:
    decision = is_skull_stripped(stripped)
    assert decision.stripped
    assert 1000.0 < decision.measure < 2500.0
    assert "skull-stripped" in decision.reason


def test_raw_scan_is_recognised(raw: Volume) -> None:
    decision = is_skull_stripped(raw)
    assert not decision.stripped
    assert decision.measure > 3000.0
    assert "not skull-stripped" in decision.reason


@pytest.mark.parametrize("name", ["glioma", "ms07", "ms19"])
def test_bundled_samples_are_skull_stripped(name: str) -> None:
    from napari_girnet.datasets import load_sample

    assert is_skull_stripped(load_sample(name).scan).stripped


def test_bundled_raw_sample_is_not_skull_stripped() -> None:
    from napari_girnet.datasets import load_sample

    sample = load_sample("colin27_raw")
    assert sample.truth is None and sample.brain_mask is not None
    assert sample.brain_mask.same_grid(sample.scan)
    assert not is_skull_stripped(sample.scan).stripped
    # its reference brain mask (ch2bet > 0) has a brain's volume
    assert 1000.0 < check_mask_volume(sample.brain_mask) < 2500.0


def test_detection_threshold_is_a_parameter(stripped: Volume) -> None:
    decision = is_skull_stripped(stripped, max_brain_ml=500.0)
    assert not decision.stripped


# --------------------------------------------------------------------------- stage
def test_stripped_input_is_not_stripped_again(stripped: Volume) -> None:
    result = preprocess_raw(stripped, "auto")
    assert result.decision["skull_stripped_input"] is True
    assert result.decision["extracted"] is False
    assert result.decision["bias_corrected"] is False
    expected_mask = brain_mask(stripped).array
    np.testing.assert_array_equal(result.brain_mask.array, expected_mask)
    np.testing.assert_array_equal(result.bias_corrected.array, stripped.array.astype(np.float32))
    np.testing.assert_array_equal(
        result.brain.array, np.where(expected_mask, stripped.array, 0).astype(np.float32)
    )
    assert result.brain.same_grid(stripped)


def test_mode_no_skips_detection_and_extraction(raw: Volume) -> None:
    result = preprocess_raw(raw, "no")
    assert result.decision["skull_stripped_input"] is None
    assert result.decision["extracted"] is False
    assert "seconds" in result.decision


@pytest.mark.slow  # ~10-25 s: a 12-DOF affine alignment of the head
def test_raw_input_is_extracted_with_the_atlas(raw: Volume, stripped: Volume) -> None:
    result = preprocess_raw(raw, "auto", method="atlas")
    assert result.decision["skull_stripped_input"] is False
    assert result.decision["extracted"] is True
    assert result.decision["method"] == "atlas"
    assert result.decision["bias_corrected"] is True
    mask = np.asarray(result.brain_mask.array, dtype=bool)
    assert result.brain_mask.same_grid(raw)
    reference = np.asarray(stripped.array) > 0
    assert _dice(mask, reference) > 0.9
    assert not np.any(result.brain.array[~mask])
    assert 500.0 <= result.decision["mask_ml"] <= 2500.0


def test_unknown_mode_and_method_raise(raw: Volume) -> None:
    with pytest.raises(SkullStripError, match="unknown mode 'maybe'"):
        preprocess_raw(raw, "maybe")  # type: ignore[arg-type]
    with pytest.raises(SkullStripError, match="brain extraction: unknown method 'bet2'"):
        extract_brain(raw, "bet2")


def test_missing_deepbet_gives_one_line_error(raw: Volume, monkeypatch) -> None:
    def missing(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    assert not deepbet_available()
    assert resolve_method("auto") == "atlas"  # the fallback
    with pytest.raises(SkullStripError, match=r"napari-girnet\[bet\]") as info:
        extract_brain(raw, "deepbet")
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- guard
def test_mask_volume_guard(stripped: Volume) -> None:
    mask = brain_mask(stripped)
    assert 1000.0 < check_mask_volume(mask) < 2500.0
    tiny = np.zeros(mask.shape, dtype=bool)
    tiny[30:34, 30:34, 30:34] = True  # 64 voxels x 27 mm^3 = 1.7 mL
    with pytest.raises(
        SkullStripError, match=r"^brain extraction: 2 mL mask, expected 500-2500 mL"
    ):
        check_mask_volume(mask.with_array(tiny))
    with pytest.raises(SkullStripError, match=r"^brain extraction: empty mask"):
        check_mask_volume(mask.with_array(np.zeros(mask.shape, dtype=bool)))
    with pytest.raises(SkullStripError, match=r"expected 500-2500 mL") as info:
        check_mask_volume(mask.with_array(np.ones(mask.shape, dtype=bool)))
    assert "\n" not in str(info.value)


def test_extraction_failure_names_the_stage(raw: Volume, monkeypatch) -> None:
    import napari_girnet.data.skullstrip as skullstrip

    def too_small(volume: Volume, *args, **kwargs) -> Volume:
        small = np.zeros(volume.shape, dtype=bool)
        small[20:25, 20:25, 20:25] = True
        return volume.with_array(small)

    monkeypatch.setattr(skullstrip, "extract_brain", too_small)
    with pytest.raises(SkullStripError, match=r"^brain extraction: \d+ mL mask, expected 500"):
        preprocess_raw(raw, "yes")


# --------------------------------------------------------------------------- N4
def test_n4_removes_a_synthetic_bias_field(stripped: Volume) -> None:
    mask = brain_mask(stripped)
    inside = np.asarray(mask.array, dtype=bool)
    clean = np.asarray(stripped.array, dtype=np.float32)
    tissue = inside & (clean > 0)
    x, y, z = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in clean.shape), indexing="ij")
    field = np.exp(0.25 * x - 0.2 * y + 0.15 * z * z).astype(np.float32)  # ~ +-25 % smooth bias
    biased = stripped.with_array(clean * field)
    corrected, bias = n4_bias_correct(biased, mask, shrink=2)
    assert corrected.same_grid(stripped) and bias.same_grid(stripped)
    # residual multiplicative bias (ratio to the clean image) inside the brain
    before = _cv(biased.array[tissue] / clean[tissue])
    after = _cv(corrected.array[tissue] / clean[tissue])
    assert after < 0.5 * before
    # the image itself is more uniform (coefficient of variation inside the mask)
    assert _cv(corrected.array[inside]) < _cv(biased.array[inside])


def test_n4_checks_its_inputs(stripped: Volume, raw: Volume) -> None:
    mask = brain_mask(stripped)
    with pytest.raises(SkullStripError, match=r"^bias-field correction: empty mask"):
        n4_bias_correct(stripped, mask.with_array(np.zeros(mask.shape, dtype=bool)))
    other = Volume(np.ones((10, 10, 10), dtype=bool), np.eye(4), name="other")
    with pytest.raises(SkullStripError, match=r"^bias-field correction: mask 'other'"):
        n4_bias_correct(raw, other)


@pytest.mark.slow
@pytest.mark.skipif(not deepbet_available(), reason="optional deepbet not installed")
def test_deepbet_extracts_the_raw_fixture(raw: Volume, stripped: Volume) -> None:
    mask = extract_brain(raw, "deepbet")
    assert mask.same_grid(raw) and mask.array.dtype == np.bool_
    assert _dice(np.asarray(mask.array), np.asarray(stripped.array) > 0) > 0.85
    assert resolve_method("auto") == "deepbet"
