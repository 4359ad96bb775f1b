"""What one benchmark subprocess runs: one registration, its field written to ``--out``.

    python -m peerlib.worker identity --scan S --out D
    python -m peerlib.worker ants --scan S --reference R [--mask M] --out D
    python -m peerlib.worker girnet-api --scan S --reference R --reference-mask RM --out D
        [--truth L] [--model P] [--seed 0]

Every mode writes ``D/field.nii.gz``: an ITK displacement field (5D, LPS mm) on the scan's grid
mapping scan points to reference points (``antsApplyTransforms -i reference -r scan -t
field.nii.gz`` puts the reference on the scan). ``girnet-api`` also writes everything of
:meth:`napari_girnet.api.RegistrationResult.save` (``lesion_mask.nii.gz``, ``report.json``...).

ANTs setting (fixed; the case is already on the reference grid, so no affine stage, identity
initialisation): ``ants.registration(fixed=scan, moving=reference,
type_of_transform="SyNOnly", initial_transform="Identity", syn_metric="mattes", syn_sampling=32,
reg_iterations=(100, 70, 50), grad_step=0.2, flow_sigma=3, total_sigma=0, mask=M)`` with
``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=2`` set by the caller; the forward transforms are
composed into one displacement field with ``ants.apply_transforms(..., compose=prefix)``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

ANTS_SETTING: dict[str, object] = {
    "type_of_transform": "SyNOnly",
    "initial_transform": "Identity",
    "syn_metric": "mattes",
    "syn_sampling": 32,
    "reg_iterations": (100, 70, 50),
    "grad_step": 0.2,
    "flow_sigma": 3,
    "total_sigma": 0,
}


def _identity(args: argparse.Namespace) -> None:
    from napari_girnet.data.nifti import read_nifti, write_displacement

    scan = read_nifti(args.scan)
    write_displacement(
        args.out / "field.nii.gz", np.zeros((3, *scan.shape), np.float32), scan, convention="itk"
    )


def _ants(args: argparse.Namespace) -> None:
    import ants

    fixed = ants.image_read(str(args.scan))
    moving = ants.image_read(str(args.reference))
    mask = ants.image_read(str(args.mask)) if args.mask else None
    work = args.out / "ants"
    work.mkdir(parents=True, exist_ok=True)
    reg = ants.registration(
        fixed, moving, mask=mask, outprefix=str(work / "reg_"), verbose=False, **ANTS_SETTING
    )
    composed = ants.apply_transforms(
        fixed, moving, reg["fwdtransforms"], compose=str(work / "composed_")
    )
    shutil.copyfile(composed, args.out / "field.nii.gz")
    shutil.rmtree(work)


def _girnet_api(args: argparse.Namespace) -> None:
    import torch

    from napari_girnet import api
    from napari_girnet.data.atlas import Atlas
    from napari_girnet.data.nifti import read_nifti

    torch.set_num_threads(args.threads)
    image = read_nifti(args.reference, name="healthy reference").canonical()
    mask = read_nifti(args.reference_mask, name="healthy reference mask").canonical()
    atlas = Atlas(image=image, mask=mask.with_array(np.asarray(mask.array) > 0), preset="custom")
    result = api.register(
        str(args.scan),
        atlas=atlas,
        model=args.model,
        truth=str(args.truth) if args.truth else None,
        seed=args.seed,
        instance_steps=args.instance_steps,
        checkpoint_dir=args.out / "checkpoint",
    )
    result.save(args.out)
    shutil.copyfile(args.out / "field_atlas_to_scan.nii.gz", args.out / "field.nii.gz")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="peerlib.worker", description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["identity", "ants", "girnet-api"])
    parser.add_argument("--scan", type=Path, required=True)
    parser.add_argument("--reference", type=Path)
    parser.add_argument("--reference-mask", type=Path)
    parser.add_argument("--mask", type=Path, help="ANTs fixed-image metric mask")
    parser.add_argument("--truth", type=Path)
    parser.add_argument("--model", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--instance-steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    {"identity": _identity, "ants": _ants, "girnet-api": _girnet_api}[args.mode](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
