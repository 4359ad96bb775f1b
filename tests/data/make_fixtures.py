"""Regenerate the small test fixtures in tests/data from the real data in /work/shared/data.

Deterministic and re-runnable: the same sources give byte-identical files (nibabel writes gzip
with mtime 0). Every output is a downsample (3 or 4 mm) or a few slices, never a full-size copy.
See README.md next to this file for the source and licence of every file.

Downsampling is exact block averaging: a new voxel of size ``f`` x the source voxel (f = 3 or
4) is the mean of the f x f x f source voxels it covers (voxels outside the source count as 0).
Images keep their dtype (rounded for integers); label maps take the source voxel at the block
centre (nearest neighbour); lesion masks keep a voxel when the lesion covers more than 25 % of
the block (area averaging > 0.25, so small lesions survive).

Run::

    .venv/bin/python tests/data/make_fixtures.py [--shared /work/shared/data] [--out tests/data]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from napari_girnet.data.atlas import load_atlas_full, working_grid
from napari_girnet.data.volume import Volume

GLIOMA = "glioma-tcga-du-7294"
MS_T1 = "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
MS_GOLD = "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"
N_MASKS = 4  # MS lesion masks with the largest lesion volume
SLAB_SLICES = 3
SLAB_MM = 4.0


def report(message: str) -> None:
    """Progress output of this script (stdout)."""
    sys.stdout.write(message + "\n")


def read(path: Path) -> tuple[Volume, nib.Nifti1Image]:
    """Volume in the file's own voxel order (no reorientation) and the nibabel image."""
    img = nib.load(str(path))
    return Volume(np.asarray(img.dataobj), img.affine, name=path.name), img


def coarse_grid(volume: Volume, factor: int) -> tuple[tuple[int, int, int], np.ndarray]:
    """Grid with the same directions and ``factor`` x the voxel size, covering the same FOV.

    Voxel ``k`` of the new grid is the centre of source voxels ``factor*k .. factor*k+f-1``.
    """
    shape = tuple(int(np.ceil(n / factor)) for n in volume.shape)
    scale = np.diag([factor, factor, factor, 1.0])
    scale[:3, 3] = (factor - 1) / 2.0  # centre of the first block, in source voxels
    return shape, volume.affine @ scale


def block_average(volume: Volume, shape, affine) -> np.ndarray:
    """Mean of the source voxels covered by each target voxel (float64).

    The target grid must be axis-aligned with the source with an integer size ratio
    (``inv(source.affine) @ affine`` diagonal with integer entries).
    """
    m = np.linalg.inv(volume.affine) @ np.asarray(affine, dtype=np.float64)
    ratio = np.diag(m)[:3]
    if not np.allclose(m[:3, :3], np.diag(ratio), atol=1e-6) or np.any(ratio <= 0):
        raise ValueError(f"{volume.name}: target grid is not axis-aligned with the source")
    sizes = np.round(ratio).astype(int)
    # direct summation (not uniform_filter's running sums, which leave ~1e-14 residues in the
    # zero background)
    kernel = np.full(tuple(sizes), 1.0 / np.prod(sizes))
    filtered = ndi.correlate(
        np.asarray(volume.array, dtype=np.float64), kernel, mode="constant", cval=0.0
    )
    # a window of even size s is centred at i - 0.5: sample half a voxel further
    offset = m[:3, 3] + np.where(sizes % 2 == 0, 0.5, 0.0)
    return ndi.affine_transform(
        filtered,
        m[:3, :3],
        offset,
        output_shape=tuple(shape),
        order=1,
        mode="constant",
        cval=0.0,
        prefilter=False,
    )


def nearest(volume: Volume, shape, affine) -> np.ndarray:
    """Nearest-neighbour sampling (labels) at the target voxel centres."""
    m = np.linalg.inv(volume.affine) @ np.asarray(affine, dtype=np.float64)
    return ndi.affine_transform(
        np.asarray(volume.array),
        m[:3, :3],
        m[:3, 3],
        output_shape=tuple(shape),
        order=0,
        mode="constant",
        cval=0,
        prefilter=False,
    )


def save(
    array: np.ndarray, affine: np.ndarray, path: Path, source: nib.Nifti1Image | None, dtype
) -> None:
    """Write a NIfTI with the source file's sform/qform codes (1 = scanner when no source)."""
    array = np.asarray(array)
    if np.issubdtype(np.dtype(dtype), np.integer) and not np.issubdtype(array.dtype, np.integer):
        array = np.round(array)
    img = nib.Nifti1Image(array.astype(dtype), affine)
    s_code = q_code = 1
    if source is not None:
        s_code = int(source.header.get_sform(coded=True)[1]) or 1
        q_code = int(source.header.get_qform(coded=True)[1]) or 1
    img.set_sform(affine, code=s_code)
    img.set_qform(affine, code=q_code)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    report(
        f"{path.name:36s} {array.shape!s:16s} {np.dtype(dtype).name:8s} "
        f"{''.join(nib.aff2axcodes(affine))} {path.stat().st_size / 1024:7.1f} KiB"
    )


def downsample_3mm(shared: Path, out: Path) -> None:
    # glioma T1 (int16, LPS, SRI24) and the fused tumour labels (0/1/2)
    t1, t1_img = read(shared / GLIOMA / "TCGA-DU-7294_t1_bet.nii.gz")
    seg, seg_img = read(shared / GLIOMA / "TCGA-DU-7294_tumor_seg_fusion.nii.gz")
    shape, affine = coarse_grid(t1, 3)
    save(block_average(t1, shape, affine), affine, out / "glioma_t1_3mm.nii.gz", t1_img, np.int16)
    save(nearest(seg, shape, affine), affine, out / "glioma_tumor_3mm.nii.gz", seg_img, np.uint8)

    # MS patient 07: T1 (float32, LAS, FSL MNI grid) and consensus lesion mask
    ms, ms_img = read(shared / "ms-lesions" / "patient07" / MS_T1)
    gold, gold_img = read(shared / "ms-lesions" / "patient07" / MS_GOLD)
    shape, affine = coarse_grid(ms, 3)
    save(block_average(ms, shape, affine), affine, out / "ms07_t1_3mm.nii.gz", ms_img, np.float32)
    lesion = block_average(gold.with_array(gold.array > 0), shape, affine) > 0.25
    save(lesion, affine, out / "ms07_lesion_3mm.nii.gz", gold_img, np.uint8)

    # Colin27 (uint8, RAS) and AAL labels
    colin, colin_img = read(shared / "colin27" / "ch2bet.nii.gz")
    aal, aal_img = read(shared / "colin27" / "aal.nii.gz")
    shape, affine = coarse_grid(colin, 3)
    save(
        block_average(colin, shape, affine), affine, out / "colin27_3mm.nii.gz", colin_img, np.uint8
    )
    save(nearest(aal, shape, affine), affine, out / "colin27_aal_3mm.nii.gz", aal_img, np.uint8)

    # the MS lesion masks with the largest lesion volume
    volumes = []
    for path in sorted((shared / "ms-lesions" / "masks").glob("patient*_lesion_mask_mni.nii.gz")):
        volumes.append((int((np.asarray(nib.load(str(path)).dataobj) > 0).sum()), path))
    volumes.sort(key=lambda item: (-item[0], item[1].name))
    for n_voxels, path in volumes[:N_MASKS]:
        mask, mask_img = read(path)
        shape, affine = coarse_grid(mask, 3)
        lesion = block_average(mask.with_array(mask.array > 0), shape, affine) > 0.25
        patient = path.name.split("_")[0]
        target = out / "ms_masks_3mm" / f"{patient}_lesion_3mm.nii.gz"
        report(f"  ({patient}: {n_voxels} lesion voxels at 1 mm, {int(lesion.sum())} at 3 mm)")
        save(lesion, affine, target, mask_img, np.uint8)


def slabs_4mm(shared: Path, out: Path) -> None:
    """Axial slabs of the 4 mm working grid: atlas, MS07 and MS19 T1 and lesion masks.

    The slab is the ``SLAB_SLICES`` consecutive axial slices of ``working_grid(4 mm)`` holding
    the most MS07 lesion (MS07's lesions are small: masks here are "any overlap", i.e. a 4 mm
    voxel is lesion when any of its 64 source voxels is). MS data are on the FSL MNI grid, in
    the atlas's world frame: resampled by affine only, no registration.
    """
    shape, affine = working_grid(SLAB_MM, multiple=16)
    patients = {}
    for patient in ("patient07", "patient19"):
        t1, t1_img = read(shared / "ms-lesions" / patient / MS_T1)
        gold, gold_img = read(shared / "ms-lesions" / patient / MS_GOLD)
        # canonical RAS: axis-aligned with the RAS working grid
        patients[patient] = (t1.canonical(), t1_img, gold.canonical(), gold_img)
    gold07 = patients["patient07"][2]
    lesion = block_average(gold07.with_array(gold07.array > 0), shape, affine) > 0
    per_slice = lesion.sum(axis=(0, 1))
    window = np.convolve(per_slice, np.ones(SLAB_SLICES), mode="valid")
    k0 = int(np.argmax(window))  # first slice of the SLAB_SLICES slices with most lesion
    slab_affine = affine.copy()
    slab_affine[:3, 3] = affine[:3, :3] @ [0, 0, k0] + affine[:3, 3]
    slab_shape = (shape[0], shape[1], SLAB_SLICES)
    report(
        f"  (slab: slices {k0}..{k0 + SLAB_SLICES - 1} of the {shape} 4 mm working grid, "
        f"z = {slab_affine[2, 3]:.1f} mm + 4 k)"
    )

    atlas = load_atlas_full()
    image = block_average(atlas.image, slab_shape, slab_affine)
    mask = (
        block_average(
            atlas.mask.with_array(atlas.mask.array.astype(np.float32)), slab_shape, slab_affine
        )
        > 0.5
    )
    image = np.where(mask, np.clip(image, 0.0, 1.0), 0.0)
    save(image, slab_affine, out / "atlas_slab_4mm.nii.gz", None, np.float32)
    save(mask, slab_affine, out / "atlas_slab_mask_4mm.nii.gz", None, np.uint8)
    for patient, (t1, t1_img, gold, gold_img) in patients.items():
        tag = f"ms{patient[-2:]}"
        save(
            block_average(t1, slab_shape, slab_affine),
            slab_affine,
            out / f"{tag}_slab_4mm.nii.gz",
            t1_img,
            np.float32,
        )
        slab_lesion = block_average(gold.with_array(gold.array > 0), slab_shape, slab_affine) > 0
        report(f"  ({tag}: lesion voxels per slice {slab_lesion.sum(axis=(0, 1)).tolist()})")
        save(slab_lesion, slab_affine, out / f"{tag}_slab_lesion_4mm.nii.gz", gold_img, np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shared",
        type=Path,
        default=Path("/work/shared/data"),
        help="folder with the real data (see its README.md)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="output folder (default: this folder)",
    )
    args = parser.parse_args(argv)
    downsample_3mm(args.shared, args.out)
    slabs_4mm(args.shared, args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*.nii.gz"))
    report(f"total {total / 1024:.1f} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
