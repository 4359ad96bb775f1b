"""Small real brain MRI bundled with napari-girnet, on the 2 mm atlas working grid.

The files under ``napari_girnet/datasets/files`` (built from public data by
``tools/make_datasets.py`` with :mod:`napari_girnet.datasets.build`; sources, transformations,
licences and citations in ``files/LICENSES.md``) all lie on the grid of
:func:`~napari_girnet.data.atlas.load_atlas` ``("2mm")``: 80 x 96 x 80 voxels, 2 mm, canonical
RAS, MNI152 2009a symmetric space. Images are stored as uint8 ``round(255 x intensity)``;
loaders return float32 images in [0, 1] (0 outside the brain), bool masks and int16 labels.
Results are cached and their arrays are read-only (copy before modifying).

Contents:

* **Samples** (:data:`SAMPLES`, :func:`load_sample`): real pathological scans with their
  truth: ``"glioma"`` (TCGA-DU-7294 low-grade glioma T1, affinely aligned; fused BraTS-2020
  tumour mask, a silver standard), ``"ms07"`` and ``"ms19"`` (MS patients of open_ms_data, T1,
  affinely aligned; 3-rater consensus lesion masks).
* **Colin27** (:func:`load_colin27`, :func:`aal_names`, :func:`colin27_source_brain`): a
  healthy brain with the AAL parcellation (116 regions), the healthy source of pseudo cases.
* **Lesion library** (:func:`lesion_library`): 21 real lesions as
  :class:`~napari_girnet.data.synthetic.LesionSource` (20 MS consensus masks, the glioma) for
  :func:`~napari_girnet.data.synthetic.make_case`.

Licences: Colin27 MNI/McGill permissive notice; AAL research use (cite Tzourio-Mazoyer et al.
2002); MS data CC-BY (cite Lesjak et al., Neuroinformatics 2017); glioma TCIA TCGA-LGG CC BY
3.0, repository Apache-2.0.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_girnet.data.nifti import read_nifti
from napari_girnet.data.synthetic import LESION_KINDS, LesionSource, SourceBrain
from napari_girnet.data.volume import Volume

__all__ = [
    "MS_APPEARANCE_DONOR",
    "MS_MASK_PATIENTS",
    "RAW_SAMPLES",
    "SAMPLES",
    "DatasetError",
    "Sample",
    "aal_names",
    "case_sources",
    "colin27_source_brain",
    "datasets_dir",
    "lesion_library",
    "load_colin27",
    "load_sample",
]

logger = logging.getLogger(__name__)

#: Pathological samples of :func:`load_sample` (on the 2 mm working grid, with a lesion truth).
SAMPLES: tuple[str, ...] = ("glioma", "ms07", "ms19")
#: Raw samples of :func:`load_sample`: healthy T1 heads with skull on their own grid (not the
#: working grid), no lesion truth, a reference ``brain_mask``; for the raw-scan path
#: (:mod:`napari_girnet.data.skullstrip`).
RAW_SAMPLES: tuple[str, ...] = ("colin27_raw",)
#: Two-digit ids of the bundled MS masks (``files/ms_masks/patientNN.nii.gz``).
MS_MASK_PATIENTS: tuple[str, ...] = tuple(f"{i:02d}" for i in range(1, 21))
#: Patient whose T1 and lesion intensities give the appearance of each MS mask: its own T1 for
#: 07 and 19, else patient 07 for odd and 19 for even patient numbers (no T1 in the data).
MS_APPEARANCE_DONOR: dict[str, str] = {
    pid: pid if pid in ("07", "19") else ("07" if int(pid) % 2 else "19")
    for pid in MS_MASK_PATIENTS
}

_MS_LICENCE = "CC-BY; cite Lesjak et al., Neuroinformatics 2017 (DOI 10.1007/s12021-017-9348-7)"
_GLIOMA_LICENCE = (
    "TCIA TCGA-LGG images, CC BY 3.0 (DOI 10.7937/K9/TCIA.2016.L4LTD3TK); "
    "BrainLesion/tutorials repository, Apache-2.0"
)
_COLIN_LICENCE = (
    "Colin27: MNI/McGill permissive notice; AAL: research use, cite Tzourio-Mazoyer et al. 2002"
)
_SAMPLE_INFO: dict[str, tuple[str, str, str, str]] = {
    # name: (scan file, truth file, description, licence)
    "glioma": (
        "glioma_t1.nii.gz",
        "glioma_tumor.nii.gz",
        "TCGA-DU-7294 low-grade glioma: skull-stripped T1 affinely aligned to the MNI152 atlas "
        "(2 mm working grid); truth: whole tumour (all labels) of the fusion of 5 BraTS-2020 "
        "algorithms (silver standard)",
        _GLIOMA_LICENCE,
    ),
    "ms07": (
        "ms07_t1.nii.gz",
        "ms07_lesion.nii.gz",
        "Multiple-sclerosis patient 07 (open_ms_data): N4-corrected skull-stripped T1 affinely "
        "aligned to the MNI152 atlas (2 mm working grid); truth: 3-rater consensus lesion mask "
        "(MS lesions are faint on T1)",
        _MS_LICENCE,
    ),
    "ms19": (
        "ms19_t1.nii.gz",
        "ms19_lesion.nii.gz",
        "Multiple-sclerosis patient 19 (open_ms_data): N4-corrected skull-stripped T1 affinely "
        "aligned to the MNI152 atlas (2 mm working grid); truth: 3-rater consensus lesion mask "
        "(MS lesions are faint on T1)",
        _MS_LICENCE,
    ),
}


_RAW_SAMPLE_INFO: dict[str, tuple[str, str, str, str]] = {
    # name: (scan file, reference brain mask file, description, licence)
    "colin27_raw": (
        "colin27_raw_t1.nii.gz",
        "colin27_raw_brain_mask.nii.gz",
        "Colin27 T1 with skull, scalp and neck (healthy; ch2 of mricron-data), 2 mm block "
        "average on its own grid (91 x 109 x 91, MNI/SPM frame, not skull-stripped, not on the "
        "working grid); reference brain mask: ch2bet > 0",
        "Colin27: MNI/McGill permissive notice",
    ),
}


class DatasetError(ValueError):
    """Unknown dataset name, or a bundled file that is missing or not as expected."""


@dataclass(frozen=True, eq=False)
class Sample:
    """A bundled real scan with its ground truth.

    Attributes
    ----------
    name : str
        One of :data:`SAMPLES`.
    scan : Volume
        T1, float32 in [0, 1], 0 outside the brain, on the 2 mm working grid.
    truth : Volume or None
        bool lesion / tumour mask on the same grid.
    description : str
        What the scan and the truth are.
    licence : str
        Licence and citation.
    brain_mask : Volume or None
        Reference brain mask (bool, scan's grid) of a raw sample (:data:`RAW_SAMPLES`).
    """

    name: str
    scan: Volume
    truth: Volume | None
    description: str
    licence: str
    brain_mask: Volume | None = None

    @property
    def lesion(self) -> Volume:
        """``truth``, for the lesion samples of :data:`SAMPLES` (raises for a raw sample)."""
        if self.truth is None:
            raise DatasetError(f"sample {self.name!r} has no lesion mask")
        return self.truth


# --------------------------------------------------------------------------- files
def datasets_dir() -> Path:
    """Folder of the bundled files (``napari_girnet/datasets/files``).

    Raises
    ------
    DatasetError
        If the package is not installed as a folder on disk (e.g. imported from a zip).
    """
    root = importlib.resources.files(__name__).joinpath("files")
    path = Path(str(root))
    if not path.is_dir():
        raise DatasetError(f"{path}: bundled dataset folder not found (package data missing)")
    return path


def _read(rel: str, name: str) -> Volume:
    resource = importlib.resources.files(__name__).joinpath("files", *rel.split("/"))
    if not resource.is_file():
        raise DatasetError(f"bundled file {rel!r} not found in {__name__}/files")
    with importlib.resources.as_file(resource) as path:
        return read_nifti(path, name=name)


def _readonly(volume: Volume, array: np.ndarray) -> Volume:
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return Volume(array, volume.affine, name=volume.name, meta=dict(volume.meta))


@functools.lru_cache(maxsize=64)
def _image(rel: str, name: str) -> Volume:
    """A bundled uint8 image as float32 in [0, 1]."""
    vol = _read(rel, name)
    return _readonly(vol, np.asarray(vol.array, dtype=np.float32) / np.float32(255.0))


@functools.lru_cache(maxsize=64)
def _mask(rel: str, name: str) -> Volume:
    vol = _read(rel, name)
    return _readonly(vol, np.asarray(vol.array) > 0)


# --------------------------------------------------------------------------- public API
def load_sample(name: str) -> Sample:
    """A bundled real pathological scan and its truth.

    Parameters
    ----------
    name : str
        One of :data:`SAMPLES`: ``"glioma"``, ``"ms07"``, ``"ms19"`` (T1 on the 2 mm working
        grid, lesion truth), or of :data:`RAW_SAMPLES`: ``"colin27_raw"`` (T1 with skull on
        its own 2 mm grid, values in [0, 1]; ``truth`` None, reference ``brain_mask``).

    Returns
    -------
    Sample
        Cached; arrays read-only.

    Raises
    ------
    DatasetError
        (a ``ValueError``) for an unknown name; the message lists the valid ones.
    """
    if name not in _SAMPLE_INFO and name not in _RAW_SAMPLE_INFO:
        raise DatasetError(
            f"unknown sample {name!r}; valid samples: {', '.join(SAMPLES + RAW_SAMPLES)}"
        )
    return _load_sample(name)


@functools.lru_cache(maxsize=8)
def _load_sample(name: str) -> Sample:
    if name in _RAW_SAMPLE_INFO:
        scan_file, mask_file, description, licence = _RAW_SAMPLE_INFO[name]
        return Sample(
            name=name,
            scan=_image(scan_file, name),
            truth=None,
            description=description,
            licence=licence,
            brain_mask=_mask(mask_file, f"{name} brain mask (reference)"),
        )
    scan_file, truth_file, description, licence = _SAMPLE_INFO[name]
    return Sample(
        name=name,
        scan=_image(scan_file, name),
        truth=_mask(truth_file, f"{name} truth"),
        description=description,
        licence=licence,
    )


def load_colin27() -> tuple[Volume, Volume]:
    """Colin27 T1 and its AAL labels on the 2 mm working grid.

    Returns
    -------
    image : Volume
        float32 in [0, 1], 0 outside the brain (resampled by affine: Colin27 is near MNI).
    labels : Volume
        int16 AAL labels (0 background, 1..116; names from :func:`aal_names`).
    """
    return _colin27()


@functools.lru_cache(maxsize=1)
def _colin27() -> tuple[Volume, Volume]:
    image = _image("colin27_t1.nii.gz", "colin27")
    raw = _read("colin27_aal.nii.gz", "colin27 AAL")
    labels = _readonly(raw, np.asarray(raw.array).astype(np.int16))
    return image, labels


@functools.lru_cache(maxsize=1)
def aal_names() -> dict[int, str]:
    """AAL region names by label value (``aal_labels.txt``: ``index name code`` per line).

    Returns
    -------
    dict of int to str
        e.g. ``{1: "Precentral_L", 2: "Precentral_R", ...}`` (116 entries).
    """
    text = (
        importlib.resources.files(__name__)
        .joinpath("files", "aal_labels.txt")
        .read_text(encoding="utf-8")
    )
    names: dict[int, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    return names


def colin27_source_brain() -> SourceBrain:
    """Colin27 with its AAL labels as a :class:`~napari_girnet.data.synthetic.SourceBrain`.

    The brain mask is ``image > 0`` with holes filled (the default of ``SourceBrain``).
    """
    image, labels = load_colin27()
    return SourceBrain(name="colin27", image=image, labels=labels)


def _lesion_values(t1: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    values = np.sort(t1[lesion & (t1 > 0)])
    if values.size == 0:
        raise DatasetError("lesion appearance donor has no lesion voxel inside its brain")
    return values


def _donor_appearance(pid: str, mask: np.ndarray, donor: Sample) -> np.ndarray:
    """Donor T1 with the voxels of ``mask`` drawn from the donor's lesion intensities.

    Smooth noise (Gaussian sigma 1 voxel, seeded with the patient number) is ranked inside
    ``mask`` and mapped through the empirical quantiles of the donor's lesion voxels, so the
    pasted lesion has the donor's lesion intensity distribution and a little spatial texture.
    """
    t1 = np.asarray(donor.scan.array, dtype=np.float32)
    values = _lesion_values(t1, np.asarray(donor.lesion.array, dtype=bool))
    rng = np.random.default_rng(int(pid))
    noise = ndi.gaussian_filter(rng.standard_normal(mask.shape), sigma=1.0)[mask]
    ranks = np.argsort(np.argsort(noise, kind="stable"), kind="stable")
    q = (ranks + 0.5) / ranks.size
    src_q = (np.arange(values.size) + 0.5) / values.size
    out = t1.copy()
    out[mask] = np.interp(q, src_q, values).astype(np.float32)
    return out


@functools.lru_cache(maxsize=1)
def _all_lesions() -> tuple[LesionSource, ...]:
    sources: list[LesionSource] = []
    for pid in MS_MASK_PATIENTS:
        name = f"ms{pid}"
        donor_id = MS_APPEARANCE_DONOR[pid]
        donor = load_sample(f"ms{donor_id}")
        if donor_id == pid:
            mask = donor.lesion
            appearance = donor.scan
            description = (
                f"MS patient {pid} (open_ms_data): consensus lesion mask and the patient's own "
                "T1 intensities"
            )
        else:
            mask = _mask(f"ms_masks/patient{pid}.nii.gz", f"{name} lesion")
            array = _donor_appearance(pid, np.asarray(mask.array, dtype=bool), donor)
            appearance = _readonly(donor.scan, array)
            appearance = Volume(appearance.array, appearance.affine, name=f"{name} appearance")
            description = (
                f"MS: shape from patient {pid}, intensities from patient {donor_id}'s lesions "
                f"(patient {pid} has no T1 in the data; appearance = patient {donor_id}'s T1 with "
                f"the mask filled from the distribution of patient {donor_id}'s lesion voxels)"
            )
        sources.append(LesionSource(name, "ms", mask, appearance, description))
    glioma = load_sample("glioma")
    sources.append(
        LesionSource(
            "glioma",
            "glioma",
            glioma.lesion,
            glioma.scan,
            "TCGA-DU-7294 low-grade glioma: fused BraTS-2020 tumour mask (all labels) and the "
            "patient's own T1 intensities",
        )
    )
    return tuple(sources)


def lesion_library(
    kinds: Sequence[str] = ("ms", "glioma"), exclude: Sequence[str] = ()
) -> list[LesionSource]:
    """Real lesions from the bundled files, for :func:`~napari_girnet.data.synthetic.make_case`.

    Sources (names): ``"ms01"`` .. ``"ms20"`` (kind ``"ms"``) and ``"glioma"`` (kind
    ``"glioma"``), all on the 2 mm working grid. Appearance (the image whose voxels inside the
    mask give the lesion intensities): for ``ms07``, ``ms19`` and ``glioma`` the patient's own
    T1; the other 18 MS masks come without a T1, so their appearance is "shape from patient NN,
    intensities from patient 07/19's lesions": the T1 of patient 07 (odd NN) or 19 (even NN)
    with the mask's voxels filled from the distribution of that patient's lesion intensities
    (:data:`MS_APPEARANCE_DONOR`; rank-mapped smooth noise, seeded by NN).

    Parameters
    ----------
    kinds : sequence of str
        Kinds to keep (subset of ``("ms", "glioma")``).
    exclude : sequence of str
        Source names to drop, e.g. ``("glioma",)`` to keep a held-out case out of training.

    Returns
    -------
    list of LesionSource
        In the order ms01 .. ms20, glioma (cached sources; arrays read-only).

    Raises
    ------
    DatasetError
        Unknown kind or unknown name in ``exclude`` (the message lists the valid ones).
    """
    if isinstance(kinds, str):
        kinds = (kinds,)
    if isinstance(exclude, str):
        exclude = (exclude,)
    bad = [k for k in kinds if k not in LESION_KINDS]
    if bad:
        raise DatasetError(f"unknown lesion kinds {bad}; valid kinds: {', '.join(LESION_KINDS)}")
    sources = _all_lesions()
    names = [s.name for s in sources]
    unknown = [e for e in exclude if e not in names]
    if unknown:
        raise DatasetError(
            f"unknown lesion sources {unknown} in exclude; valid: {', '.join(names)}"
        )
    return [s for s in sources if s.kind in kinds and s.name not in set(exclude)]


def case_sources(
    resolution: int | str = 2,
    lesions: str = "both",
    data_dir: str | Path | None = None,
    exclude: Sequence[str] = (),
) -> tuple[list[SourceBrain], list[LesionSource]]:
    """Healthy brains and lesion sources for ``girnet make-cases`` at a resolution.

    2 mm uses the bundled files (Colin27 + the atlas; :func:`lesion_library`). Both healthy
    brains carry the AAL parcellation (drawn on Colin27, the MNI single-subject brain; on the
    MNI152 atlas it is the customary approximate parcellation), so every case has labels.
    1 mm builds the same sources from the raw shared data in ``data_dir`` (``colin27/``,
    ``ms-lesions/``, ``glioma-tcga-du-7294/``) with :mod:`napari_girnet.datasets.build`, on the
    "1mm" grid.

    Raises
    ------
    DatasetError
        For an unknown ``lesions`` choice or a 1 mm request without ``data_dir``.
    """
    from napari_girnet.data.synthetic import atlas_source_brain

    choices = {"both": ("ms", "glioma"), "ms": ("ms",), "glioma": ("glioma",)}
    if lesions not in choices:
        raise DatasetError(f"lesions must be one of {sorted(choices)}, got {lesions!r}")
    kinds = choices[lesions]
    if str(resolution) in ("2", "2mm", "2.0"):
        colin = colin27_source_brain()
        # AAL was drawn on Colin27, the MNI single-subject brain; on the MNI152 atlas it is the
        # usual approximate parcellation (both share the MNI frame)
        atlas = dataclasses.replace(atlas_source_brain("2mm"), labels=colin.labels)
        return [colin, atlas], lesion_library(kinds, exclude)
    if str(resolution) not in ("1", "1mm", "1.0"):
        raise DatasetError(f"resolution must be 1 or 2 (mm), got {resolution!r}")
    if data_dir is None:
        raise DatasetError(
            "1 mm cases are built from the raw shared data: pass --data-dir (the folder with "
            "colin27/, ms-lesions/ and glioma-tcga-du-7294/)"
        )
    from napari_girnet.datasets import build

    colin_1mm, aal = build.build_colin27(data_dir, "1mm")
    brains = [
        SourceBrain("colin27", colin_1mm, aal),
        dataclasses.replace(atlas_source_brain("1mm"), labels=aal),
    ]
    sources: list[LesionSource] = []
    if "ms" in kinds:
        masks = build.build_ms_masks(data_dir, "1mm")
        donors = {}
        for pid in sorted(set(MS_APPEARANCE_DONOR.values())):
            t1, mask = build.build_ms_patient(data_dir, pid, "1mm")
            donors[pid] = Sample(f"ms{pid}", t1, mask, f"MS patient {pid}", "CC-BY")
        for pid in MS_MASK_PATIENTS:
            donor = donors[MS_APPEARANCE_DONOR[pid]]
            if pid in donors:
                sources.append(LesionSource(f"ms{pid}", "ms", donor.lesion, donor.scan))
                continue
            mask = masks[pid]
            appearance = donor.scan.with_array(
                _donor_appearance(pid, np.asarray(mask.array, dtype=bool), donor)
            )
            sources.append(LesionSource(f"ms{pid}", "ms", mask, appearance))
    if "glioma" in kinds:
        t1, tumour, _ = build.build_glioma(data_dir, "1mm")
        sources.append(LesionSource("glioma", "glioma", tumour, t1))
    sources = [s for s in sources if s.name not in set(exclude)]
    return brains, sources
