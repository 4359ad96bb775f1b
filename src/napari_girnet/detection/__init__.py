"""Where the lesion mask comes from.

- :mod:`.segnet`: SegNet's thresholded probability (GIRNet's "TH") or, when it is implausible,
  the atlas outlier; filling a mask with InpNet or with the matched atlas ``T^M``.
- :mod:`.outlier`: the atlas-outlier baseline (numpy / scipy).
- :mod:`.refine`: the random-walker refinement (GIRNet's "PP", scikit-image).
- :mod:`.config`: :class:`InferenceConfig`, the settings of all of the above.

Imports ``core`` and ``data`` only; never Qt, napari, ``api`` or ``pipeline``.
"""

from .config import InferenceConfig, resolve_inference
from .outlier import OutlierResult, atlas_outlier_mask, mirror_left_right
from .refine import random_walker_refine, refine_on_grid
from .segnet import Detection, detect, fill_mask, matched_atlas, outlier_detection

__all__ = [
    "Detection",
    "InferenceConfig",
    "OutlierResult",
    "atlas_outlier_mask",
    "detect",
    "fill_mask",
    "matched_atlas",
    "mirror_left_right",
    "outlier_detection",
    "random_walker_refine",
    "refine_on_grid",
    "resolve_inference",
]
