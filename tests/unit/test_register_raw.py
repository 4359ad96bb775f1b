"""``register`` on a scan with skull: the prepare stage extracts the brain first."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from napari_girnet import api

DATA = Path(__file__).resolve().parents[1] / "data"
RAW = DATA / "colin27_raw_3mm.nii.gz"
STRIPPED = DATA / "colin27_3mm.nii.gz"


def _run(scan: Path, out: Path, mode: str = "auto") -> dict:
    result = api.register(
        scan, config="test", fine_tune_steps=0, instance_steps=0, skull_strip=mode,
        inference={"refine": False},
    )  # fmt: skip
    result.save(out)
    return json.loads((out / "report.json").read_text())


def test_raw_scan_is_stripped_and_outputs_its_brain_mask(tmp_path):
    report = _run(RAW, tmp_path / "raw")
    decision = report["provenance"]["preprocessing"]
    assert decision["extracted"] is True
    assert decision["skull_stripped_input"] is False
    assert decision["reason"]
    mask = nib.load(tmp_path / "raw" / "brain_mask.nii.gz")
    raw = nib.load(RAW)
    assert mask.shape == raw.shape
    np.testing.assert_allclose(mask.affine, raw.affine)
    vol_ml = float(np.count_nonzero(np.asarray(mask.dataobj))) * np.prod(
        mask.header.get_zooms()[:3]
    ) / 1000.0
    assert 900.0 < vol_ml < 2200.0  # an adult brain, not the head (about 4 L here)
    assert (tmp_path / "raw" / "bias_corrected.nii.gz").is_file()
    assert report["files"]["brain_mask"] == "brain_mask.nii.gz"


def test_stripped_scan_is_not_stripped_again(tmp_path):
    report = _run(STRIPPED, tmp_path / "stripped")
    decision = report["provenance"]["preprocessing"]
    assert decision["extracted"] is False
    assert decision["skull_stripped_input"] is True
    assert not (tmp_path / "stripped" / "brain_mask.nii.gz").exists()
    assert "brain_mask" not in report["files"]


def test_skull_strip_mode_is_checked():
    import pytest

    with pytest.raises(ValueError, match="skull_strip"):
        api.register(STRIPPED, config="test", fine_tune_steps=0, skull_strip="maybe")
