"""What a registration produces (:class:`RegistrationResult`), its report and its files."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..core.config import GIRNetConfig
from ..core.model import Prediction
from ..data.atlas import Atlas
from ..data.nifti import write_displacement, write_nifti
from ..data.preprocess import PreparedScan
from ..data.volume import Volume
from ..evaluation import metrics
from .output import staged_directory

__all__ = ["RegistrationResult"]


@dataclass
class RegistrationResult:
    """Everything :func:`napari_girnet.api.register` produces, on the scan's native grid and on
    the atlas grid.

    Native-grid volumes (same grid and affine as the input scan; ``source_affine`` restores the
    file's voxel order on writing): ``lesion_probability`` (float32 [0, 1]), ``lesion_mask``
    (uint8 0/1), ``inpainted`` (the scan with the lesion replaced by healthy tissue, in the
    scan's own intensity units), ``atlas_to_scan`` (atlas deformed onto the scan, [0, 1]) and
    ``jacobian`` (det J of the non-linear atlas-to-scan map). Atlas-grid volume:
    ``scan_to_atlas``. Fields (RAS mm, ``(3, X, Y, Z)``): ``field_atlas_to_scan`` on the native
    scan grid (native point ``x`` corresponds to atlas point ``x + d(x)``) and
    ``field_scan_to_atlas`` on the atlas working grid (atlas point ``y`` corresponds to scan
    point ``y + d(y)``), and ``field_nonlinear`` on the native grid: GIRNet's non-linear
    displacement alone, in the scan's world (what the deformation vectors show).

    When the scan was not skull-stripped and the "prepare" stage extracted the brain
    (``skull_strip="auto"`` or ``"yes"``), ``brain_mask`` (uint8 0/1) and ``bias_corrected``
    (the whole scan after N4, float32) hold those native-grid outputs; otherwise they are None.
    """

    scan: Volume
    atlas: Atlas
    prepared: PreparedScan
    prediction: Prediction
    lesion_probability: Volume
    lesion_mask: Volume
    inpainted: Volume
    atlas_to_scan: Volume
    jacobian: Volume
    scan_to_atlas: Volume
    field_atlas_to_scan: np.ndarray
    field_scan_to_atlas: np.ndarray
    field_nonlinear: np.ndarray
    config: GIRNetConfig
    checkpoint: Path | None
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    brain_mask: Volume | None = None
    bias_corrected: Volume | None = None

    def report(self) -> dict[str, Any]:
        """JSON-serialisable summary: timings per stage, config, seed, versions, metrics,
        conventions. ``provenance`` is the :class:`~napari_girnet.evaluation.report.Provenance`
        record the pipeline made (as a dict)."""
        prov = self.provenance
        return {
            "scan": self.scan.name,
            "napari_girnet_version": prov.get("napari_girnet_version", __version__),
            "torch_version": prov.get("torch_version"),
            "python": prov.get("python"),
            "seed": self.config.runtime.seed,
            "preset": self.config.preset,
            "config": self.config.to_dict(),
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "provenance": prov,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "lesion_volume_mm3": metrics.volume_mm3(
                self.lesion_mask.array > 0, self.scan.spacing.tolist()
            ),
            "alignment": {
                "atlas_world_to_scan_world_ras": np.asarray(
                    self.prepared.alignment.matrix
                ).tolist(),
                "metric": self.prepared.alignment.metric_value,
                "quality_brain_dice": self.prepared.alignment.quality,
                "init": self.prepared.alignment.init,
                "ok": self.prepared.alignment_ok,
                "warnings": list(self.prepared.warnings),
            },
            "metrics": self.metrics,
            "training": self.history[-1] if self.history else None,
            "conventions": _CONVENTIONS,
        }

    def save(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write the NIfTI outputs and ``report.json`` into ``out_dir``; returns the final paths.

        The files are written into a temporary sibling folder that is moved into place at the
        end (:func:`~napari_girnet.pipeline.output.staged_directory`): a failure leaves no
        half-written ``out_dir``.
        """
        out = Path(out_dir)
        with staged_directory(out) as tmp:
            names = self.write_files(tmp)
        return {k: out / name for k, name in names.items()}

    def write_files(self, folder: Path) -> dict[str, str]:
        """Write every output into an existing ``folder`` (not staged); returns file names."""
        names: dict[str, str] = {}
        for key in _VOLUMES:
            names[key] = write_nifti(getattr(self, key), folder / f"{key}.nii.gz").name
        for key in _OPTIONAL_VOLUMES:
            vol = getattr(self, key)
            if vol is not None:
                names[key] = write_nifti(vol, folder / f"{key}.nii.gz").name
        native_vox = _mm_to_vox(self.field_atlas_to_scan, self.scan.affine)
        names["field_atlas_to_scan"] = write_displacement(
            folder / "field_atlas_to_scan.nii.gz", native_vox, self.scan, convention="itk"
        ).name
        atlas_vox = _mm_to_vox(self.field_scan_to_atlas, self.atlas.image.affine)
        names["field_scan_to_atlas"] = write_displacement(
            folder / "field_scan_to_atlas.nii.gz", atlas_vox, self.atlas.image, convention="itk"
        ).name
        report = self.report()
        report["files"] = dict(names)
        (folder / "report.json").write_text(json.dumps(_jsonable(report), indent=2, sort_keys=True))
        names["report"] = "report.json"
        return names


_VOLUMES = (
    "lesion_probability",
    "lesion_mask",
    "inpainted",
    "atlas_to_scan",
    "scan_to_atlas",
    "jacobian",
)

_OPTIONAL_VOLUMES = ("brain_mask", "bias_corrected")

_CONVENTIONS = {
    "volumes": "lesion_probability, lesion_mask, inpainted, atlas_to_scan and jacobian "
    "are on the input scan's grid and affine; scan_to_atlas is on the atlas working "
    "grid (MNI152 ICBM 2009a symmetric, RAS mm)",
    "fields": "ITK/ANTs displacement fields (5D NIfTI, intent VECTOR, LPS mm): "
    "field_atlas_to_scan.nii.gz lives on the scan grid and maps scan points to atlas "
    "points (antsApplyTransforms -i atlas -r scan -t field_atlas_to_scan.nii.gz); "
    "field_scan_to_atlas.nii.gz lives on the atlas grid and maps atlas points to "
    "scan points",
    "jacobian": "determinant of the Jacobian of the non-linear atlas-to-scan map "
    "(after the affine alignment); <= 0 marks folding",
}


def _mm_to_vox(field_mm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``(3, X, Y, Z)`` RAS mm displacement -> voxel displacement of the grid ``affine``."""
    inv = np.linalg.inv(np.asarray(affine)[:3, :3])
    return np.einsum("ij,j...->i...", inv, field_mm).astype(np.float32)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj
