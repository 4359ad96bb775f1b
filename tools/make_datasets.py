"""Build the small real datasets bundled with napari-girnet (``napari_girnet/datasets/files``).

Reads the raw public data (layout of ``/work/shared/data``, see its README), puts every volume
on the 2 mm atlas working grid (80 x 96 x 80, ``load_atlas("2mm")``) with
:mod:`napari_girnet.datasets.build`, and writes compact files: images as uint8 ``round(255 *
intensity)`` of the [0, 1] intensities, masks and labels as uint8, all ``.nii.gz``; plus
``aal_labels.txt``, the licence files under ``licenses/``, ``LICENSES.md`` and ``README.md``.

Deterministic (fixed alignment seed, single-threaded SimpleITK, gzip ``mtime=0``): re-running
gives the same bytes. Takes a few minutes on 2 CPU cores (three affine alignments).

Usage::

    python tools/make_datasets.py [--data-dir /work/shared/data] [--out DIR] [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from napari_girnet.data.atlas import load_atlas
from napari_girnet.data.nifti import write_nifti
from napari_girnet.data.volume import Volume
from napari_girnet.datasets import MS_APPEARANCE_DONOR
from napari_girnet.datasets.build import (
    LESION_THRESHOLD,
    build_colin27,
    build_glioma,
    build_ms_masks,
    build_ms_patient,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_raw_sample import LICENCE_ROWS
from make_raw_sample import build as build_raw_sample

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "napari_girnet" / "datasets" / "files"
RESOLUTION = "2mm"

LICENCE_FILES = {
    "ms-lesions/LICENSE.txt": "licenses/ms-lesions-LICENSE.txt",
    "glioma-tcga-du-7294/LICENSE-Apache-2.0.txt": "licenses/glioma-LICENSE-Apache-2.0.txt",
    "colin27/debian-copyright.txt": "licenses/colin27-debian-copyright.txt",
}

COLIN_LICENCE = (
    "Colin27: MNI/McGill permissive notice (McConnell Brain Imaging Centre, Montreal "
    "Neurological Institute, McGill University), as redistributed in the Debian package "
    "`mricron-data` 1.2.20211006 (its copyright file: `licenses/colin27-debian-copyright.txt`). "
    "Cite Holmes et al., J Comput Assist Tomogr 22(2):324-333, 1998."
)
AAL_LICENCE = (
    "AAL: research use; cite Tzourio-Mazoyer et al., NeuroImage 15(1):273-289, 2002 "
    "(Automated anatomical labeling of activations in SPM using a macroscopic anatomical "
    "parcellation of the MNI MRI single-subject brain)."
)
MS_LICENCE = (
    "MS data (open_ms_data, University of Ljubljana): CC-BY (`licenses/ms-lesions-LICENSE.txt`); "
    "cite Lesjak et al., A Novel Public MR Image Dataset of Multiple Sclerosis Patients With "
    "Lesion Segmentations Based on Multi-rater Consensus, Neuroinformatics (2017), "
    "DOI 10.1007/s12021-017-9348-7."
)
GLIOMA_LICENCE = (
    "Glioma: TCIA TCGA-LGG images, CC BY 3.0 (cite the TCGA-LGG collection, "
    "DOI 10.7937/K9/TCIA.2016.L4LTD3TK, and Clark et al., J Digit Imaging 26(6), 2013); "
    "repository BrainLesion/tutorials, Apache-2.0 (`licenses/glioma-LICENSE-Apache-2.0.txt`); "
    "the tumour mask is a fusion of 5 BraTS-2020 algorithms (BraTS Toolkit, Kofler et al., "
    "Front Neurosci 2020), a silver standard."
)


def say(message: str) -> None:
    """Progress output of this script (stdout)."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def to_uint8_image(volume: Volume) -> Volume:
    """[0, 1] float -> uint8 ``round(255 x)`` on the same grid."""
    array = np.round(np.clip(np.asarray(volume.array, dtype=np.float64), 0, 1) * 255.0)
    return Volume(array.astype(np.uint8), volume.affine, name=volume.name)


def to_uint8_mask(volume: Volume) -> Volume:
    return Volume(np.asarray(volume.array).astype(np.uint8), volume.affine, name=volume.name)


def describe_alignment(meta: dict) -> str:
    text = str(meta.get("alignment", ""))
    before = meta.get("brain_dice_by_affine")
    after = meta.get("brain_dice_vs_atlas")
    parts = [text]
    if before is not None:
        parts.append(f"brain-mask Dice vs atlas by affine {before:.3f}")
    parts.append(f"final brain-mask Dice vs atlas {after:.3f}")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0, help="alignment metric-sampling seed")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    atlas = load_atlas(RESOLUTION)
    start = time.perf_counter()
    written: list[str] = []
    notes: dict[str, str] = {}

    def save(vol: Volume, rel: str) -> None:
        write_nifti(vol, out / rel, restore_orientation=False)
        written.append(rel)

    # ---------------------------------------------------------------- Colin27 + AAL
    colin, aal = build_colin27(args.data_dir, RESOLUTION)
    save(to_uint8_image(colin), "colin27_t1.nii.gz")
    save(Volume(aal.array.astype(np.uint8), aal.affine), "colin27_aal.nii.gz")
    notes["colin"] = describe_alignment(dict(colin.meta))
    say(f"colin27: {notes['colin']}")
    build_raw_sample(args.data_dir, out)  # colin27_raw: ch2 with skull, own 2 mm grid
    written += ["colin27_raw_t1.nii.gz", "colin27_raw_brain_mask.nii.gz"]

    # ---------------------------------------------------------------- MS patients with T1
    ms_volumes: dict[str, tuple[Volume, Volume]] = {}
    for pid in ("07", "19"):
        t1, lesion = build_ms_patient(args.data_dir, pid, RESOLUTION, seed=args.seed)
        ms_volumes[pid] = (t1, lesion)
        save(to_uint8_image(t1), f"ms{pid}_t1.nii.gz")
        save(to_uint8_mask(lesion), f"ms{pid}_lesion.nii.gz")
        notes[pid] = describe_alignment(dict(t1.meta))
        say(f"ms{pid}: {notes[pid]}; {int(lesion.array.sum())} lesion voxels (2 mm)")

    # ---------------------------------------------------------------- glioma
    g_t1, g_tumour, g_labels = build_glioma(args.data_dir, RESOLUTION, seed=args.seed)
    save(to_uint8_image(g_t1), "glioma_t1.nii.gz")
    save(to_uint8_mask(g_tumour), "glioma_tumor.nii.gz")
    notes["glioma"] = describe_alignment(dict(g_t1.meta))
    labels_present = sorted(int(v) for v in np.unique(g_labels.array) if v > 0)
    say(f"glioma: {notes['glioma']}; tumour {int(g_tumour.array.sum())} voxels (2 mm)")

    # ---------------------------------------------------------------- MS masks
    masks = build_ms_masks(args.data_dir, RESOLUTION, align=True, seed=args.seed)
    mask_notes: dict[str, str] = {}
    for pid, mask in masks.items():
        save(to_uint8_mask(mask), f"ms_masks/patient{pid}.nii.gz")
        mask_notes[pid] = str(mask.meta.get("alignment"))
    say(
        f"ms masks: {len(masks)} masks; voxels: "
        + ", ".join(f"{p}:{int(m.array.sum())}" for p, m in masks.items())
    )
    for pid in ("07", "19"):
        same = np.array_equal(masks[pid].array, ms_volumes[pid][1].array)
        say(f"ms_masks/patient{pid} == ms{pid}_lesion: {same}")

    # ---------------------------------------------------------------- text files
    shutil.copyfile(args.data_dir / "colin27" / "aal.nii.txt", out / "aal_labels.txt")
    written.append("aal_labels.txt")
    for src, dst in LICENCE_FILES.items():
        (out / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.data_dir / src, out / dst)
        written.append(dst)
    write_licences(out, notes, mask_notes, labels_present)
    write_readme(out)
    written += ["LICENSES.md", "README.md"]

    total = 0
    say("\nfiles:")
    for rel in sorted(written):
        size = (out / rel).stat().st_size
        total += size
        say(f"  {rel:40s} {size / 1024:8.1f} KiB")
    elapsed = time.perf_counter() - start
    say(f"  total {total / 1024 / 1024:.2f} MiB; grid {atlas.shape}; {elapsed:.0f} s")
    return 0


def write_licences(
    out: Path, notes: dict[str, str], mask_notes: dict[str, str], glioma_labels: list[int]
) -> None:
    grid = '2 mm atlas working grid `load_atlas("2mm")` (80 x 96 x 80, RAS, MNI152 2009a sym space)'
    img = "uint8 = round(255 x intensity in [0, 1]) (percentile 0.5/99.5 min-max inside the brain)"
    lines = [
        "# Bundled data: sources, transformations, licences",
        "",
        "Every file here is derived from public data and was produced by `tools/make_datasets.py`"
        " (library: `napari_girnet.datasets.build`). All volumes lie on the " + grid + ". "
        "Images: " + img + "; masks: uint8 0/1; labels: uint8. Lesion masks were resampled by "
        f"linear interpolation of the 0/1 mask, then > {LESION_THRESHOLD} (at 2 mm: at least 3 "
        "of the 8 1-mm voxels).",
        "",
        "## Colin27 and AAL",
        "",
        "| file | source | transformation |",
        "|---|---|---|",
        f"| `colin27_t1.nii.gz` | `colin27/ch2bet.nii.gz` (Colin27, skull-stripped T1) | "
        f"{notes['colin']}; linear |",
        "| `colin27_aal.nii.gz` | `colin27/aal.nii.gz` (AAL, 116 regions drawn on Colin27) | "
        "same mapping, nearest neighbour |",
        "| `aal_labels.txt` | `colin27/aal.nii.txt` (index, name, code) | verbatim copy |",
        *LICENCE_ROWS,
        "",
        "Licence: " + COLIN_LICENCE,
        "",
        "Licence: " + AAL_LICENCE,
        "",
        "## Multiple-sclerosis patients (open_ms_data, `cross_sectional/MNI`)",
        "",
        "| file | source | transformation |",
        "|---|---|---|",
    ]
    for pid in ("07", "19"):
        lines += [
            f"| `ms{pid}_t1.nii.gz` | `ms-lesions/patient{pid}/T1_N4_noneck_reduced_winsor_"
            f"regtoFLAIR_brain_N4_regtoMNI.nii.gz` | {notes[pid]}; linear |",
            f"| `ms{pid}_lesion.nii.gz` | `ms-lesions/patient{pid}/GOLD_STANDARD_N4_noneck_"
            f"reduced_winsor_regtoFLAIR_regtoMNI.nii.gz` (3-rater consensus) | same mapping, "
            "lesion rule |",
        ]
    for pid, how in mask_notes.items():
        donor = MS_APPEARANCE_DONOR.get(pid, pid)
        if donor == pid:
            use = "shape and intensities from patient " + pid
        else:
            use = f"shape from patient {pid}, intensities from patient {donor}'s lesions"
        lines.append(
            f"| `ms_masks/patient{pid}.nii.gz` | `ms-lesions/masks/patient{pid}_lesion_mask_"
            f"mni.nii.gz` (consensus mask) | {how}; lesion rule. In `lesion_library()`: {use} |"
        )
    lines += [
        "",
        "The open_ms_data brains are registered rigidly to MNI (not scaled): resampled by affine"
        " their brain masks overlap the atlas mask with Dice ~0.75, so patients 07 and 19 were "
        "affinely aligned with their T1, and the 18 masks without a T1 were mapped with the "
        "mean of those two alignments. For the 18 masks without a T1 the lesion library "
        "(`napari_girnet.datasets.lesion_library`) builds the appearance image from patient 07 "
        "(odd-numbered patients) or 19 (even-numbered): that patient's T1 with the voxels "
        "inside the mask replaced by intensities drawn from that patient's own lesion voxels "
        '("shape from patient NN, intensities from patient 07/19\'s lesions").',
        "",
        "Licence: " + MS_LICENCE,
        "",
        "## Glioma (TCGA-DU-7294, low-grade glioma)",
        "",
        "| file | source | transformation |",
        "|---|---|---|",
        "| `glioma_t1.nii.gz` | `glioma-tcga-du-7294/TCGA-DU-7294_t1_bet.nii.gz` (skull-stripped "
        f"T1, SRI24/BraTS space) | {notes['glioma']}; linear |",
        "| `glioma_tumor.nii.gz` | `glioma-tcga-du-7294/TCGA-DU-7294_tumor_seg_fusion.nii.gz` | "
        f"same mapping, nearest neighbour; all labels > 0 (present: {glioma_labels}) -> 1 |",
        "",
        "Licence: " + GLIOMA_LICENCE,
        "",
        "## Licence texts and documentation",
        "",
        "| file | what |",
        "|---|---|",
        "| `licenses/ms-lesions-LICENSE.txt` | open_ms_data licence (CC-BY) and reference |",
        "| `licenses/glioma-LICENSE-Apache-2.0.txt` | Apache-2.0 of BrainLesion/tutorials |",
        "| `licenses/colin27-debian-copyright.txt` | copyright file of Debian `mricron-data` |",
        "| `README.md` | what this folder holds and how to rebuild it |",
        "| `LICENSES.md` | this file |",
        "",
        "The raw files came from: Debian package `mricron-data` 1.2.20211006 (Colin27, AAL); "
        "GitHub `muschellij2/open_ms_data`, `cross_sectional/MNI/` (MS); GitHub "
        "`BrainLesion/tutorials`, `BraTS-Toolkit/data/TCGA-DU-7294/` (glioma).",
        "",
    ]
    (out / "LICENSES.md").write_text("\n".join(lines), encoding="utf-8")


def write_readme(out: Path) -> None:
    text = """# napari-girnet bundled data

Small real brain MRI on the 2 mm atlas working grid (80 x 96 x 80, RAS, the MNI152 2009a
symmetric space of `napari_girnet.data.atlas.load_atlas("2mm")`), shipped in the wheel for the
napari sample data, the CLI demo, tests and the pseudo-case generator. Load them with
`napari_girnet.datasets` (`load_sample`, `load_colin27`, `aal_names`, `lesion_library`);
the loaders return float32 [0, 1] images and bool masks.

Images are stored as uint8 `round(255 x intensity)`; masks and labels as uint8.
Exception: the raw sample `colin27_raw_*` (Colin27 with skull, for the raw-scan path; built by
`tools/make_raw_sample.py`) lies on its own 2 mm grid (91 x 109 x 91), not the working grid.
Sources, transformations, licences and citations of every file: `LICENSES.md`.

Rebuild (needs the raw data, a few minutes): `python tools/make_datasets.py --data-dir
/work/shared/data`.
"""
    (out / "README.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
