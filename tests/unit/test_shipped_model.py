"""The model shipped in the package: it loads safely, says what was trained, and `register`
applies it as is (no per-scan co-learning) with a non-empty lesion mask on the glioma fixture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from napari_girnet import api
from napari_girnet.core.checkpoint import CheckpointError, file_sha256, load_checkpoint
from napari_girnet.core.config import preset
from napari_girnet.pipeline.models import load_model

DATA = Path(__file__).resolve().parents[1] / "data"
GLIOMA = DATA / "glioma_t1_3mm.nii.gz"
GLIOMA_MASK = DATA / "glioma_tumor_3mm.nii.gz"
WEIGHTS = Path(api.__file__).resolve().parent / "weights"


def test_the_cpu_2mm_model_ships_with_its_licence_and_card() -> None:
    path = api.bundled_model_path("cpu-2mm")
    assert path is not None and path == WEIGHTS / "cpu-2mm.pt"
    assert path.stat().st_size <= 40e6  # all presets together at most 40 MB
    assert "MIT" in (WEIGHTS / "LICENSE-SymNet.md").read_text()
    ckpt = load_checkpoint(path)  # torch.load(weights_only=True) inside
    assert ckpt.config == preset("cpu-2mm", inference={"detector": "atlas-outlier"})
    assert ckpt.provenance["trained_networks"] == ["inp", "reg"]
    assert ckpt.trainer == {}  # weights only
    for name in ("reg", "seg", "inp"):
        assert all(torch.isfinite(t).all() for t in ckpt.model[name].values()), name
    assert api.bundled_model_path("test") is None


def test_the_bundled_model_is_the_default_and_is_not_random() -> None:
    loaded = load_model(None, preset("cpu-2mm"), seed=0, explicit=True)
    assert not loaded.untrained
    assert loaded.sha256 == file_sha256(WEIGHTS / "cpu-2mm.pt")
    # RegNet is not at its random initialisation: its weights differ from a fresh model's
    random = load_model("random", preset("cpu-2mm"), seed=0, explicit=True)
    shipped_reg = loaded.net.networks["reg"].state_dict()
    random_reg = random.net.networks["reg"].state_dict()
    assert any(not torch.equal(shipped_reg[k], random_reg[k]) for k in shipped_reg)


def test_a_checkpoint_of_another_preset_is_refused_naming_the_file() -> None:
    path = api.bundled_model_path("cpu-2mm")
    with pytest.raises(CheckpointError, match=r"cpu-2mm\.pt.*'cpu-2mm'.*'test'"):
        api.register(GLIOMA, model=path, config="test")


@pytest.mark.slow  # one registration at 2 mm without instance optimisation: ~10 s
def test_register_with_the_shipped_model_finds_the_glioma() -> None:
    result = api.register(GLIOMA, truth=GLIOMA_MASK, instance_steps=0, seed=0)
    prov = result.provenance
    assert prov["fine_tune_steps"] == 0  # applied as trained
    assert prov["model"].endswith("cpu-2mm.pt")
    assert prov["lesion_detection"]["source"] == "atlas-outlier"
    assert prov["lesion_detection"]["fill"] == "inpnet"
    assert result.lesion_mask.array.any()
    assert result.metrics["dice"] > 0.5
