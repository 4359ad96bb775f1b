"""Inputs of the pipeline: scans as canonical volumes, configs, the atlas on the working grid."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..core.config import GIRNetConfig, preset
from ..data.atlas import Atlas, load_atlas
from ..data.nifti import read_nifti
from ..data.preprocess import PreparedScan, prepare_scan
from ..data.volume import Volume, VolumeError

__all__ = ["ScanLike", "as_volume", "load_atlas_for", "prepare", "resolve_config", "to_tensor"]

ScanLike = Volume | str | os.PathLike | tuple[np.ndarray, np.ndarray]


def _check_dtype(array: Any, label: str) -> None:
    """Refuse arrays that are not real-valued images (complex, object, strings)."""
    dtype = np.asarray(array).dtype
    if dtype.kind not in "biuf":
        raise VolumeError(
            f"{label}: array of dtype {dtype} is not an image; give real "
            "(integer or float) intensities"
        )


def as_volume(source: ScanLike, name: str | None = None) -> Volume:
    """Turn a path, ``Volume`` or ``(array, affine)`` pair into a canonical RAS :class:`Volume`.

    The array of an ``(array, affine)`` pair is indexed like the affine (voxel ``(i, j, k)`` ->
    RAS mm); the result is reoriented to canonical RAS without resampling.

    Raises
    ------
    VolumeError
        (or its subclass ``NiftiError``) naming the input, for 2D/4D data, NaN, empty arrays,
        complex, object or string arrays, bad affines, missing or corrupt files.
    """
    label = name or "input"
    if isinstance(source, Volume):
        _check_dtype(source.array, source.name or label)
        vol = source
    elif isinstance(source, str | os.PathLike):
        vol = read_nifti(source, name=name)
        _check_dtype(vol.array, str(source))
    elif isinstance(source, tuple) and len(source) == 2:
        array, affine = source
        _check_dtype(array, name or "array")
        vol = Volume(np.asarray(array), np.asarray(affine, dtype=np.float64), name=name or "array")
    else:
        raise VolumeError(
            f"{label}: expected a Volume, a NIfTI path or an (array, affine) pair, "
            f"got {type(source).__name__}"
        )
    vol = vol.canonical().check_finite()
    if name and not vol.name:
        vol = Volume(vol.array, vol.affine, name, vol.source_affine, vol.meta)
    return vol


def resolve_config(config: GIRNetConfig | str | None = None, **overrides: Any) -> GIRNetConfig:
    """A validated config from a preset name (default ``"cpu-2mm"``) or a config object.

    ``overrides`` are section dicts, e.g. ``schedule={"steps": 50}``.

    Raises
    ------
    ConfigError
        Unknown preset, section or option, or an invalid value.
    """
    if config is None:
        config = "cpu-2mm"
    cfg = preset(config) if isinstance(config, str) else config.validate()
    return cfg.override(**overrides) if overrides else cfg


def load_atlas_for(config: GIRNetConfig, atlas: ScanLike | str = "mni152", seed: int = 0) -> Atlas:
    """The atlas on ``config``'s working grid.

    ``"mni152"`` is the ICBM 2009a symmetric template from nilearn. Any other skull-stripped T1
    template (path or Volume) is affinely aligned to MNI152 and resampled onto the same working
    grid, so the rest of the pipeline is unchanged.
    """
    grid_atlas = load_atlas(config.data.atlas_preset)
    if isinstance(atlas, str) and atlas.lower() in ("mni152", "mni", "default"):
        return grid_atlas
    custom = prepare_scan(as_volume(atlas, name="atlas"), grid_atlas, seed=seed)
    return Atlas(image=custom.image, mask=custom.mask, preset=f"custom:{grid_atlas.preset}")


def prepare(
    scan: ScanLike,
    atlas: Atlas | None = None,
    config: GIRNetConfig | str | None = None,
    *,
    seed: int = 0,
    mask: ScanLike | None = None,
    name: str | None = None,
) -> PreparedScan:
    """Brain mask, intensity normalisation, affine alignment and resampling to the working grid."""
    cfg = resolve_config(config)
    atlas = atlas or load_atlas_for(cfg)
    vol = as_volume(scan, name=name)
    mask_vol = as_volume(mask, name="mask") if mask is not None else None
    if mask_vol is not None:
        mask_vol = mask_vol.with_array(np.asarray(mask_vol.array) > 0)
    return prepare_scan(vol, atlas, seed=seed, mask=mask_vol)


def to_tensor(volume: Volume) -> torch.Tensor:
    """``(1, X, Y, Z)`` float32 tensor (a copy) of a working-grid volume."""
    return torch.from_numpy(np.array(volume.array, dtype=np.float32, copy=True))[None]
