"""Tests of the folder-based pseudo cases: split rule, folder readers, appearance recipes,
mass effect, case.json records and the training-case loader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_girnet.data import case_library as cl
from napari_girnet.data import lesion_appearance as la
from napari_girnet.data.atlas import load_atlas
from napari_girnet.data.case_loader import CaseDataset, iter_cases, list_cases
from napari_girnet.data.nifti import read_nifti, write_nifti
from napari_girnet.data.preprocess import resample
from napari_girnet.data.synthetic import LesionPlacementError, SourceBrain, read_case, write_case
from napari_girnet.data.volume import Volume

DATA = Path(__file__).resolve().parents[1] / "data"
MS_NAMES = [f"patient{i:02d}_lesion_mask_mni.nii.gz" for i in range(1, 21)]
OASIS_IDS = [
    "1000", "1001", "1002", "1006", "1007", "1008", "1009", "1010", "1011", "1012", "1013",
    "1014", "1015", "1017", "1036", "1101", "1104", "1107", "1110", "1113", "1116", "1119",
    "1122", "1125", "1128",
]  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def atlas():
    return load_atlas("4mm")


@pytest.fixture(scope="module")
def brain(atlas) -> SourceBrain:
    """Colin27 (3 mm fixture) on the 4 mm working grid (it is near MNI: identity transform)."""
    colin = read_nifti(DATA / "colin27_3mm.nii.gz")
    grid = atlas.image
    img = resample(colin.with_array(np.asarray(colin.array, np.float32)), grid.shape, grid.affine)
    arr = np.asarray(img.array) / float(np.asarray(img.array).max())
    mask = ndi.binary_fill_holes(arr > 0.05)
    arr = np.where(mask, arr, 0).astype(np.float32)
    # "ventricles": a dark ball labelled 51 (a CSF label of the OASIS label maps)
    centre = np.argwhere(mask).mean(0)
    ball = ((np.indices(grid.shape) - centre[:, None, None, None]) ** 2).sum(0) <= 3.5**2
    arr[ball] = 0.12 + 0.03 * np.random.default_rng(0).random(int(ball.sum()))
    labels = np.zeros(grid.shape, np.int16)
    labels[ball] = 51
    return SourceBrain(
        "1000",
        Volume(arr, grid.affine, name="colin"),
        Volume(labels, grid.affine),
        Volume(mask, grid.affine),
    )


@pytest.fixture(scope="module")
def ms_mask(atlas) -> np.ndarray:
    return cl.load_lesion_mask(DATA / "ms_masks_3mm" / "patient04_lesion_3mm.nii.gz", atlas)


# --------------------------------------------------------------------------- split rule
def test_healthy_split_fixed_oasis_rule():
    split = cl.healthy_split(OASIS_IDS)
    assert sorted(k for k, v in split.items() if v == "val") == ["1119", "1122", "1125", "1128"]
    assert cl.healthy_split(list(reversed(OASIS_IDS))) == split


def test_healthy_split_generic_folder_every_7th():
    ids = [f"s{i:02d}" for i in range(15)]
    split = cl.healthy_split(ids)
    assert [k for k, v in split.items() if v == "val"] == ["s06", "s13"]


def test_lesion_split_ms_folder():
    split = cl.lesion_split(MS_NAMES)
    val = sorted(k[:9] for k, v in split.items() if v == "val")
    held = sorted(k[:9] for k, v in split.items() if v == "held_out")
    assert val == ["patient14", "patient18", "patient20"]
    assert held == ["patient07", "patient19"]


def test_lesion_split_is_deterministic_and_about_15_percent():
    names = [f"bwsrsub-{i}_lesion.nii.gz" for i in range(1, 1209)]
    rng = np.random.default_rng(0)
    a = cl.lesion_split(names)
    b = cl.lesion_split(list(rng.permutation(names)))
    assert a == b
    frac = sum(v == "val" for v in a.values()) / len(a)
    assert 0.13 < frac < 0.16
    assert {"train", "val"} == set(a.values())


def test_case_split_every_4th():
    assert [cl.case_split(i, 0.25) for i in range(8)] == ["train"] * 3 + ["val"] + ["train"] * 3 + [
        "val"
    ]
    with pytest.raises(cl.LibraryError):
        cl.case_split(0, 1.0)


# --------------------------------------------------------------------------- folders
def test_empty_folders_give_one_line_errors(tmp_path):
    with pytest.raises(cl.LibraryError) as err:
        cl.scan_healthy_dir(tmp_path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(cl.LibraryError) as err:
        cl.scan_lesion_dir(tmp_path)
    assert "no lesion masks" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(cl.LibraryError, match="not found"):
        cl.scan_lesion_dir(tmp_path / "missing")


def test_scan_healthy_dir_layout(tmp_path):
    for sid in ("1119", "1000"):
        for suffix in ("_SS", "_mask", "_glm"):
            (tmp_path / f"{sid}{suffix}.nii.gz").write_bytes(b"")
    (tmp_path / "1001_SS.nii.gz").write_bytes(b"")
    subjects = cl.scan_healthy_dir(tmp_path)
    assert [s.id for s in subjects] == ["1000", "1001", "1119"]
    assert [s.split for s in subjects] == ["train", "train", "val"]
    assert subjects[0].mask is not None and subjects[0].labels is not None
    assert subjects[1].mask is None


def test_scan_lesion_dir_kind_and_split():
    files = cl.scan_lesion_dir(DATA / "ms_masks_3mm", "ms")
    by_name = {f.path.name[:9]: f.split for f in files}
    assert by_name["patient19"] == "held_out"
    assert all(f.source.startswith("ms_masks_3mm/") for f in files)
    with pytest.raises(cl.LibraryError, match="kind"):
        cl.scan_lesion_dir(DATA / "ms_masks_3mm", "tumour")


def test_lesion_mask_on_mni_and_not(atlas, ms_mask, tmp_path):
    assert ms_mask.shape == atlas.image.shape and ms_mask.any()
    vol = read_nifti(DATA / "ms_masks_3mm" / "patient04_lesion_3mm.nii.gz")
    moved = vol.affine.copy()
    moved[:3, 3] += 400.0  # same voxels, 40 cm away from the MNI brain
    bad = tmp_path / "shifted.nii.gz"
    write_nifti(Volume(np.asarray(vol.array), moved, name="x"), bad)
    with pytest.raises(cl.LibraryError) as err:
        cl.load_lesion_mask(bad, atlas)
    assert "not a mask on MNI space" in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------- appearance
@pytest.mark.parametrize("recipe", ["rank", "csf"])
def test_mask_recipes_hypointense_and_deterministic(brain, ms_mask, recipe):
    healthy = np.asarray(brain.image.array)
    lesion = ms_mask & brain.brain_mask()
    stats = la.tissue_stats(healthy, brain.brain_mask(), np.asarray(brain.labels.array) == 51)
    assert stats.source == "labels" and stats.csf < stats.gm < stats.wm

    def run(seed: int, pv: float = 0.6) -> np.ndarray:
        rng = np.random.default_rng(seed)
        if recipe == "rank":
            return la.rank_transplant(
                healthy, lesion, stats.csf_values, rng, contrast=1.0, pv_sigma=pv
            )
        return la.csf_like(healthy, lesion, stats.csf, rng, contrast=0.9, pv_sigma=pv)

    sharp = run(3, pv=0.0)
    # CSF-like: the CSF distribution itself, or CSF blended with 10 % tissue and texture
    assert abs(sharp[lesion].mean() - stats.csf) < (0.05 if recipe == "rank" else 0.12)
    out = run(3)
    assert out.dtype == np.float32 and out.shape == healthy.shape
    assert out[lesion].mean() < healthy[lesion].mean() - 0.1  # hypointense, with the PV rim
    far = ~ndi.binary_dilation(lesion, np.ones((3, 3, 3)), iterations=3)
    np.testing.assert_array_equal(out[far], healthy[far])
    assert run(3).tobytes() == out.tobytes()
    assert run(4).tobytes() != out.tobytes()


@pytest.mark.parametrize("volume_ml", [5.0, 40.0, 150.0])
def test_synthetic_tumour_volume_and_compartments(atlas, volume_ml):
    # a large uniform "brain" so that even 150 mL fits on the 4 mm grid
    shape = atlas.image.shape
    brain = np.zeros(shape, bool)
    brain[4:-4, 4:-4, 4:-4] = True
    rng = np.random.default_rng(0)
    healthy = np.where(brain, 0.7 + 0.05 * rng.standard_normal(shape), 0).astype(np.float32)
    stats = la.TissueStats(np.linspace(0.1, 0.25, 50, dtype=np.float32), 0.18, 0.6, 0.8, "test")
    centre = [(n - 1) / 2 for n in shape]
    scan, mask, params = la.synthetic_tumour(
        healthy, brain, stats, centre, volume_ml, atlas.image.spacing, np.random.default_rng(1)
    )
    got = mask.sum() * float(np.prod(atlas.image.spacing)) / 1000
    assert 0.95 <= got / volume_ml <= 1.1
    assert ndi.label(mask)[1] == 1
    vols = params["volumes_ml"]
    assert abs(sum(vols.values()) - got) < 1e-6 and vols["oedema"] > 0
    other, _ = la.tumour_shape(brain, centre, volume_ml, atlas.image.spacing, rng)
    assert other.any() and not np.array_equal(other, mask)
    # the lesion is darker than the tissue, and the core (when drawn) darkest
    assert scan[mask].mean() < healthy[mask].mean()
    again = la.synthetic_tumour(
        healthy, brain, stats, centre, volume_ml, atlas.image.spacing, np.random.default_rng(1)
    )
    assert again[0].tobytes() == scan.tobytes()


def test_tumour_core_is_hypointense(atlas):
    shape = atlas.image.shape
    brain = np.zeros(shape, bool)
    brain[4:-4, 4:-4, 4:-4] = True
    healthy = np.where(brain, 0.75, 0).astype(np.float32)
    stats = la.TissueStats(np.linspace(0.1, 0.2, 50, dtype=np.float32), 0.15, 0.6, 0.8, "test")
    centre = [(n - 1) / 2 for n in shape]
    for seed in range(20):
        scan, mask, params = la.synthetic_tumour(
            healthy, brain, stats, centre, 60.0, atlas.image.spacing, np.random.default_rng(seed)
        )
        if params["necrotic_core"] and params["volumes_ml"]["core"] > 1.0:
            break
    else:  # pragma: no cover - 75 % of draws have a core
        pytest.fail("no draw with a necrotic core")
    core = mask & (scan < 0.3)
    assert core.sum() * 0.064 > 0.5
    # the darkest voxels are deep inside the lesion, not at its border
    depth = ndi.distance_transform_edt(mask)
    assert depth[core].mean() > depth[mask].mean()


def test_radial_push_is_diffeomorphic():
    push = la.radial_push((24, 24, 24), (12, 12, 12), 4.0, 0.9)
    assert cl.min_jacobian_det(push) > 0
    with pytest.raises(la.AppearanceError):
        la.radial_push((8, 8, 8), (4, 4, 4), 2.0, 1.0)


def test_augmentation_reproducible_from_record(brain):
    img = np.asarray(brain.image.array)
    params = la.draw_augmentation(np.random.default_rng(0))
    params = json.loads(json.dumps(params))
    a = la.augment_intensity(img, brain.brain_mask(), params)
    b = la.augment_intensity(img, brain.brain_mask(), params)
    assert a.tobytes() == b.tobytes()
    assert np.all(a[~brain.brain_mask()] == 0) and a.min() >= 0 and a.max() <= 1


# --------------------------------------------------------------------------- cases
def test_mass_effect_keeps_ground_truth_exact(brain, tmp_path):
    rng = np.random.default_rng(7)
    case = cl.make_library_case(
        brain, "tumour", rng, csf_labels=(51,), mass_effect_probability=1.0, tumour_ml=(20, 40)
    )
    m = case.manifest
    assert m["mass_effect"]["applied"] and m["mass_effect"]["peak_push_mm"] > 0
    assert m["min_jacobian_det"] > 0
    assert 5.0 <= m["lesion_volume_ml"] <= 150.0
    write_case(case, tmp_path / "c")
    back = read_case(tmp_path / "c")
    image, mask, labels = cl.warp_source(brain, back.field)
    healthy = la.augment_intensity(image, mask, back.manifest["augmentation"])
    np.testing.assert_allclose(healthy, back.healthy.array, atol=1e-6)
    np.testing.assert_array_equal(mask, back.brain_mask.array)
    np.testing.assert_array_equal(labels, back.labels.array)
    # scan and healthy twin differ only in and right around the lesion
    diff = np.abs(back.scan.array - back.healthy.array) > 1e-6
    near = ndi.binary_dilation(back.lesion.array, np.ones((3, 3, 3)), iterations=4)
    assert not (diff & ~near).any()


def test_mass_effect_moves_tissue(brain):
    kw = {"csf_labels": (51,), "tumour_ml": (30, 30), "augment": False}
    with_push = cl.make_library_case(
        brain, "tumour", np.random.default_rng(2), mass_effect_probability=1.0, **kw
    )
    without = cl.make_library_case(
        brain, "tumour", np.random.default_rng(2), mass_effect_probability=0.0, **kw
    )
    assert not np.array_equal(with_push.field, without.field)


def test_mask_case_and_placement_error(brain, ms_mask):
    case = cl.make_library_case(
        brain, "ms", np.random.default_rng(1), lesion_mask=ms_mask, csf_labels=(51,),
        lesion_source="ms/p04", min_lesion_ml=0.0,
    )  # fmt: skip
    m = case.manifest
    assert m["lesion_kind"] == "ms" and m["appearance"]["recipe"] in (
        "rank_transplant",
        "csf_like_ms",
    )
    assert m["lesion_volume_ml"] > 0
    with pytest.raises(LesionPlacementError):
        cl.make_library_case(
            brain, "stroke", np.random.default_rng(1), lesion_mask=ms_mask, min_lesion_ml=1e6
        )


@pytest.fixture(scope="module")
def library(tmp_path_factory, brain):
    """A tiny healthy folder (2 subjects, one validation) and an MS mask folder; 8 cases."""
    root = tmp_path_factory.mktemp("lib")
    healthy = root / "healthy"
    healthy.mkdir()
    colin = read_nifti(DATA / "colin27_3mm.nii.gz")
    mask = colin.with_array(ndi.binary_fill_holes(np.asarray(colin.array) > 5).astype(np.uint8))
    for sid in ("1000", "1119"):
        shutil.copy(DATA / "colin27_3mm.nii.gz", healthy / f"{sid}_SS.nii.gz")
        write_nifti(mask, healthy / f"{sid}_mask.nii.gz")
    lesions = root / "ms-lesions"
    lesions.mkdir()
    names = [f"patient{i:02d}_lesion_mask_mni.nii.gz" for i in (1, 2, 3, 4, 5, 6, 18)]
    for name, src in zip(names, [4, 6, 12, 4, 6, 12, 4], strict=True):
        shutil.copy(DATA / "ms_masks_3mm" / f"patient{src:02d}_lesion_3mm.nii.gz", lesions / name)
    out = root / "cases"
    kw = {"resolution": "4mm", "mix": {"tumour": 0.5, "ms": 0.5}, "min_lesion_ml": 0.0}
    paths = cl.make_library_cases(out, 8, 3, [healthy], [(lesions, None)], **kw)
    return root, out, paths, kw


@pytest.mark.slow
def test_make_library_cases_records_split(library):
    root, out, paths, _ = library
    assert [p.name for p in paths] == [f"case_{i:04d}" for i in range(8)]
    lesion_splits = cl.lesion_split(sorted(p.name for p in (root / "ms-lesions").iterdir()))
    for p in paths:
        m = json.loads((p / "case.json").read_text())
        assert m["split"] == cl.case_split(m["case_index"])
        assert m["healthy_subject"] == ("1119" if m["split"] == "val" else "1000")
        assert m["lesion_kind"] in ("tumour", "ms") and m["lesion_volume_ml"] > 0
        if m["lesion_kind"] == "ms":
            assert lesion_splits[m["lesion_file"]] == m["split"]
        assert "recipe" in m["appearance"] and m["split_rule"] == cl.SPLIT_RULE
    assert (out / "_healthy_cache" / "4mm" / "1000" / "info.json").is_file()


@pytest.mark.slow
def test_make_library_cases_deterministic_and_resumable(library, tmp_path):
    root, out, _, kw = library
    again = cl.make_library_cases(
        tmp_path, 6, 3, [root / "healthy"], [(root / "ms-lesions", None)], start=5,
        cache_dir=out / "_healthy_cache" / "4mm", **kw,
    )  # fmt: skip
    assert [p.name for p in again] == ["case_0005"]
    for name in ("case.json", "scan.nii.gz", "lesion.nii.gz", "field.nii.gz"):
        new, old = tmp_path / "case_0005" / name, out / "case_0005" / name
        assert new.read_bytes() == old.read_bytes()


@pytest.mark.slow
def test_loader_lists_and_reads_splits(library):
    _, out, paths, _ = library
    train, val = list_cases(out, "train"), list_cases(out, "val")
    assert len(train) + len(val) == len(paths) and not set(train) & set(val)
    ds = CaseDataset(out, "val")
    scan, mask, healthy, field, brain_mask = ds[0]
    assert scan.dtype == np.float32 and field.shape == (3, *scan.shape)
    assert set(np.unique(mask)) <= {0.0, 1.0} and mask.sum() > 0
    assert brain_mask.shape == healthy.shape
    assert ds.manifest(0)["split"] == "val"
    assert len(list(iter_cases(out, "train", seed=0, epochs=2))) == 2 * len(train)


def test_loader_errors(tmp_path):
    with pytest.raises(ValueError, match="no train case"):
        list_cases(tmp_path, "train")
    with pytest.raises(ValueError, match="split must be"):
        list_cases(tmp_path, "test")


def test_cli_make_cases_bad_folders_one_line(tmp_path, capsys):
    from napari_girnet.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(
        ["make-cases", "--healthy-dir", str(empty), "--out", str(tmp_path / "o"), "--n", "1"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and str(empty) in err and "no skull-stripped T1" in err
    code = main(
        ["make-cases", "--lesion-dir", str(empty), "--out", str(tmp_path / "o"), "--n", "1"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--healthy-dir" in err and "\n" not in err
