"""napari-girnet: GIRNet registration, lesion segmentation and inpainting of brain MRI.

The public API (``fit``, ``register``, ``evaluate``, ``prepare``) lives in
:mod:`napari_girnet.api` and is re-exported here lazily, so that importing the package (e.g. by
napari when it opens a NIfTI file with our reader) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

_API = (
    "fit",
    "register",
    "register_steps",
    "register_pair",
    "evaluate",
    "prepare",
    "FitSession",
    "RegistrationResult",
    "PairResult",
)

__all__ = [  # noqa: RUF022 - version first, then the API in _API's order
    "__version__",
    "fit",
    "register",
    "register_steps",
    "register_pair",
    "evaluate",
    "prepare",
    "FitSession",
    "RegistrationResult",
    "PairResult",
    "register_many",
]

if TYPE_CHECKING:  # pragma: no cover
    from .api import (
        FitSession,
        PairResult,
        RegistrationResult,
        evaluate,
        fit,
        prepare,
        register,
        register_pair,
        register_steps,
    )
    from .cohort import register_many


def __getattr__(name: str) -> Any:
    if name == "register_many":  # cohorts: napari_girnet.cohort
        from .cohort import register_many

        return register_many
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'napari_girnet' has no attribute {name!r}")
