"""npe2 sample data: the MNI152 atlas and the bundled pathological scans with their truth.

Every layer carries the girnet geometry metadata of
:func:`~napari_girnet._napari.layers.volume_to_layer_data` plus ``"licence"`` and
``"description"`` under ``metadata["girnet"]``. All volumes are on the 2 mm atlas working grid
(80 x 96 x 80, MNI152 space), so they overlay each other; the exception is the raw sample
(Colin27 with skull, on its own 2 mm grid in the MNI frame: it overlays them by world position).
"""

from __future__ import annotations

import logging

from napari_girnet._napari.layers import LayerDataTuple, volume_to_layer_data

__all__ = ["colin27_raw", "glioma", "mni152_2mm", "ms07", "ms19"]

logger = logging.getLogger(__name__)

MNI152_LICENCE = (
    "MNI152 ICBM 2009a symmetric template, distributed with nilearn (BSD-3-Clause) under the "
    "MNI/McGill permissive notice (Copyright (C) 1993-2009 Louis Collins, McConnell Brain "
    "Imaging Centre, Montreal Neurological Institute, McGill University)"
)


def mni152_2mm() -> list[LayerDataTuple]:
    """The MNI152 2009a symmetric T1 template on the 2 mm working grid (Image, [0, 1])."""
    from napari_girnet.data.atlas import load_atlas

    atlas = load_atlas("2mm")
    return [
        volume_to_layer_data(
            atlas.image,
            "MNI152 (2 mm)",
            contrast_limits=(0.0, 1.0),
            metadata={
                "girnet": {
                    "licence": MNI152_LICENCE,
                    "description": "MNI152 ICBM 2009a symmetric T1 template, GIRNet 2 mm "
                    "working grid (brain only, intensities in [0, 1])",
                    "sample": "mni152",
                }
            },
        )
    ]


def _sample(name: str, scan_label: str, truth_label: str) -> list[LayerDataTuple]:
    from napari_girnet.datasets import load_sample

    sample = load_sample(name)
    info = {
        "licence": sample.licence,
        "description": sample.description,
        "sample": sample.name,
    }
    layers = [
        volume_to_layer_data(
            sample.scan,
            scan_label,
            contrast_limits=(0.0, 1.0),
            metadata={"girnet": dict(info)},
        )
    ]
    if sample.truth is not None:
        layers.append(
            volume_to_layer_data(
                sample.truth,
                truth_label,
                kind="labels",
                opacity=0.5,
                metadata={"girnet": {**info, "role": "truth"}},
            )
        )
    return layers


def glioma() -> list[LayerDataTuple]:
    """TCGA-DU-7294 low-grade glioma T1 (Image) and its tumour mask (Labels), 2 mm."""
    return _sample("glioma", "glioma T1", "glioma tumour (truth)")


def ms07() -> list[LayerDataTuple]:
    """Multiple-sclerosis patient 07 T1 (Image) and consensus lesion mask (Labels), 2 mm."""
    return _sample("ms07", "MS07 T1", "MS07 lesions (truth)")


def ms19() -> list[LayerDataTuple]:
    """Multiple-sclerosis patient 19 T1 (Image) and consensus lesion mask (Labels), 2 mm."""
    return _sample("ms19", "MS19 T1", "MS19 lesions (truth)")


def colin27_raw() -> list[LayerDataTuple]:
    """Colin27 T1 with skull (Image, own 2 mm grid) and its reference brain mask (Labels)."""
    from napari_girnet.datasets import load_sample

    sample = load_sample("colin27_raw")
    info = {"licence": sample.licence, "description": sample.description, "sample": sample.name}
    layers = [
        volume_to_layer_data(
            sample.scan,
            "Colin27 T1 with skull",
            contrast_limits=(0.0, 1.0),
            metadata={"girnet": dict(info)},
        )
    ]
    if sample.brain_mask is not None:
        layers.append(
            volume_to_layer_data(
                sample.brain_mask,
                "Colin27 brain mask (reference)",
                kind="labels",
                opacity=0.3,
                metadata={"girnet": {**info, "role": "reference brain mask"}},
            )
        )
    return layers
