"""Tooltips of every parameter of the GIRNet widgets, in one place.

Keys are ``"<widget>.<parameter>"``; :func:`tip` looks one up and fails loudly on a typo, so a
widget never ships a control without help text.
"""

from __future__ import annotations

__all__ = ["TIPS", "tip"]

_PRESETS = (
    "'cpu-2mm': 3D at 2 mm (80x96x80), the CPU default; "
    "'gpu-1mm': the paper's 1 mm setting (160x192x144), needs a GPU; "
    "'2d': axial slices at 1 mm with 2D networks (fast on a laptop); "
    "'test': tiny networks on a 32^3 grid for smoke tests (not for real use)."
)
_DEVICE = (
    "Where the networks run. 'auto' picks CUDA when available, then CPU. Only the devices "
    "present on this machine are listed."
)
_SEED = (
    "Seeds the weights, the data order, the pseudo-pathological cases and the affine alignment's "
    "sampling. On CPU the same seed gives the same result; GPUs may differ in the last digits."
)
_ATLAS = (
    "The template the scans are registered to. 'MNI152 (bundled)' is the ICBM 2009a symmetric "
    "template shipped with nilearn (offline). Any other skull-stripped T1 Image layer is "
    "affinely aligned to MNI152 first and used in its place."
)
_PSEUDO = (
    "Number of pseudo-pathological cases (real MS and glioma lesions from the bundled library "
    "placed in healthy brains) mixed into the training data. They give the segmentation network "
    "many lesion examples and stop the inpainting network from memorising one scan. "
    "0 disables them (faster to prepare)."
)

_LANDMARK_CSV = (
    "Landmark CSVs: 'id,x,y,z' in RAS mm, or BraTS-Reg 'Landmark,X,Y,Z' in LPS mm (world "
    "coordinates, converted to RAS as (-X, -Y, Z)). On the BraTS-Reg 240 x 240 x 155 grid "
    "(1 mm, LPS, file affine diag(-1, -1, 1) with translation (0, 239, 0)) the landmark "
    "(X, Y, Z) is voxel (X, Y + 239, Z) of the file's array, so the points land on the scan "
    "opened with this plugin's reader."
)

TIPS: dict[str, str] = {
    # ---------------------------------------------------------------- Train
    "train.scans": (
        "Skull-stripped T1 Image layers to train on (tick one or more). Each is affinely "
        "aligned to the atlas and resampled to the preset's working grid when you press Start."
    ),
    "train.atlas": _ATLAS,
    "train.preset": "Network size, working grid and schedule. " + _PRESETS,
    "train.steps": (
        "Co-learning steps: each step updates one network (registration, segmentation or "
        "inpainting, cycling reg x1, seg x2, inp x2). Presets with InpNet pretraining run those "
        "steps first, on top of this number. Resuming continues up to this number."
    ),
    "train.device": _DEVICE,
    "train.seed": _SEED,
    "train.checkpoint_dir": (
        "Folder for last.pt (written every few steps, on Stop and at the end). If it already "
        "holds a last.pt from the same preset, Start resumes from it; pick a new folder (New) "
        "for a fresh run."
    ),
    "train.browse": "Choose the checkpoint folder.",
    "train.new_run": "Use a new, empty, time-stamped folder for a fresh run.",
    "train.pseudo_cases": _PSEUDO,
    "train.init_bundled": (
        "Start from the pretrained weights shipped for this preset instead of random weights "
        "(ignored when resuming from last.pt). Disabled when no weights are bundled."
    ),
    "train.preview_every": (
        "Every this many steps, predict on the first scan and show the lesion probability, "
        "mask, inpainted scan and deformed atlas as 'preview: ...' layers (0 = no previews). "
        "Each preview costs about a second at 2 mm."
    ),
    "train.start": "Prepare the scans (affine alignment) and start or resume co-learning.",
    "train.stop": (
        "Stop after the current step; the weights are saved to last.pt and Start resumes."
    ),
    "train.plot": "Loss of each network against the step (updated while training).",
    # ---------------------------------------------------------------- Apply
    "apply.scan": "Skull-stripped T1 Image layer to register, segment and inpaint.",
    "apply.atlas": _ATLAS
    + (
        " 'fixed scan: <layer>' entries choose pair mode (longitudinal registration): the scan "
        "(moving, e.g. pre-operative) is registered to that follow-up scan of the same patient "
        "(fixed), and the results appear on both grids: on the moving scan ('... (on "
        "<moving>)') and on the fixed scan ('... (on <fixed>)': moved scan, inpainted scan, "
        "lesion mask, deformation fixed→moving). The fixed scan must be another 3D Image "
        "layer; pair mode cannot be combined with 'every selected Image layer'."
    ),
    "apply.model": (
        "'bundled model for preset': the pretrained weights shipped for the chosen preset "
        "(random weights if none are bundled); 'last trained': the checkpoint of the last "
        "training run in this viewer; 'checkpoint file': a last.pt you choose."
    ),
    "apply.preset": "Preset of the bundled model. " + _PRESETS,
    "apply.checkpoint": "A napari-girnet checkpoint (.pt) to apply.",
    "apply.browse": "Choose a checkpoint file.",
    "apply.fine_tune_steps": (
        "Co-learning steps on this scan before predicting. 0 applies the model as is (fast). "
        "Fine-tuning adapts the networks to the new scan and usually improves the lesion mask "
        "and the registration, at the cost of time (a few seconds per step at 2 mm on a CPU)."
    ),
    "apply.instance_steps": (
        "Instance-optimisation steps that refine the registration of this scan with GIRNet's "
        "own loss (similarity on the inpainted scan, same regularisers; the result stays "
        "diffeomorphic). 0 uses RegNet's prediction as is. About 1.5 s per step at 2 mm on a CPU."
    ),
    "apply.pseudo_cases": _PSEUDO + " Only used when fine-tuning.",
    "apply.refine": (
        "Refine the lesion mask with a random walker seeded by the mask (GIRNet's "
        "post-processing 'PP'; on by default, the paper's best setting)."
    ),
    "apply.all_selected": (
        "Register every Image layer selected in the layer list (not the atlas, not GIRNet "
        "results) one after another with the same settings; each scan's result layers appear "
        "as soon as it is done, a scan that fails shows its error and the next one runs."
    ),
    "apply.skull_strip": (
        "Brain extraction (deepbet, or the atlas brain mask when deepbet is not installed) and "
        "N4 bias-field correction before the alignment. 'auto' runs them only when the scan is "
        "not already skull-stripped (the decision and its reason are in the result layers' "
        "provenance); 'yes' forces them, 'no' skips them."
    ),
    "apply.detector": (
        "Where the lesion mask comes from. 'segnet': GIRNet's SegNet (thresholded at 0.5). "
        "'atlas-outlier': where the scan departs from the atlas warped onto it and "
        "histogram-matched to it (what atlas-guided healthy inpainting cannot predict), "
        "largest component. 'auto' (default): SegNet when its mask is plausible (non-empty, "
        "under 30 % of the brain), otherwise the atlas outlier, e.g. for an untrained model."
    ),
    "apply.stride": (
        "Show one deformation vector every this many voxels along each axis (smaller = denser, "
        "slower to draw)."
    ),
    "apply.truth": (
        "Optional ground-truth lesion Labels layer on the scan's grid: adds Dice and HD95 to "
        "the result message."
    ),
    "apply.device": _DEVICE,
    "apply.seed": _SEED,
    "apply.run": "Register the scan to the atlas, segment and inpaint its lesion.",
    "apply.cancel": "Cancel at the next step (fine-tuning) or discard the result when it arrives.",
    # ---------------------------------------------------------------- Evaluate
    "evaluate.moving": (
        "Points layer with the moving landmarks (e.g. on the atlas). Paired with the fixed "
        "landmarks by their 'id' feature, or by order when either layer has no ids."
    ),
    "evaluate.fixed": (
        "Points layer with the fixed landmarks (e.g. on the scan): the points the field maps."
    ),
    "evaluate.load_moving": "Add a Points layer from a landmark CSV and use it as moving. "
    + _LANDMARK_CSV,
    "evaluate.load_fixed": "Add a Points layer from a landmark CSV and use it as fixed. "
    + _LANDMARK_CSV,
    "evaluate.field_source": (
        "Where the displacement field comes from: 'none' compares the paired points as they "
        "are; 'file…' reads the NIfTI below; 'last pair result' uses the field fixed→moving of "
        "the last pair-mode run of Apply model (on the fixed scan's grid: moving = the "
        "pre-operative scan, fixed = the follow-up). With a field the table shows the TRE "
        "before and after it, and the export holds both."
    ),
    "evaluate.field": (
        "Optional displacement field NIfTI defined on the fixed grid and mapping fixed points "
        "to moving points, e.g. field_atlas_to_scan.nii.gz saved by Apply (scan = fixed, "
        "atlas = moving). ITK/ANTs (5D, LPS mm) and napari-girnet voxel fields are read. "
        "Without a field, TRE is the distance between the paired points."
    ),
    "evaluate.field_browse": "Choose a displacement field NIfTI.",
    "evaluate.field_clear": "Evaluate without a field.",
    "evaluate.tre": "Target registration error per landmark and mean ± SD, in mm.",
    "evaluate.pred": "Predicted lesion Labels layer (nonzero = lesion).",
    "evaluate.truth": "Ground-truth lesion Labels layer on the same grid (nonzero = lesion).",
    "evaluate.masks": (
        "Dice and 95th-percentile Hausdorff distance (mm, using the layer's scale as voxel size)."
    ),
    "evaluate.export": (
        "Write the metrics shown in the tables to a CSV file (metric,value), with a JSON copy "
        "next to it."
    ),
}


def tip(key: str) -> str:
    """The tooltip for ``key`` (``"<widget>.<parameter>"``).

    Raises
    ------
    KeyError
        For an unknown key (a typo in a widget).
    """
    return TIPS[key]
