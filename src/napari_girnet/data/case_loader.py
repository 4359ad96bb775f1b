"""List and read pseudo cases of one split for training (numpy; no torch).

A case folder is what :func:`napari_girnet.data.synthetic.write_case` writes (e.g. with
``girnet make-cases --healthy-dir ...``): ``case_NNNN/`` with ``scan.nii.gz``,
``lesion.nii.gz``, ``healthy.nii.gz``, ``brain_mask.nii.gz``, ``field.nii.gz`` (and
``labels.nii.gz``) and a ``case.json`` whose ``split`` is ``"train"`` or ``"val"``
(:mod:`napari_girnet.data.case_library`).

:class:`CaseDataset` is a map-style dataset (``len`` / ``[i]``) that a
``torch.utils.data.DataLoader`` can wrap directly; items are tuples of float32 numpy arrays
``(scan, mask, healthy, field, brain_mask)`` on the working grid (canonical RAS, axes
``(X, Y, Z)``):

* ``scan`` ``(X, Y, Z)``: the pseudo-pathological T1 in [0, 1];
* ``mask`` ``(X, Y, Z)``: the lesion, 0/1;
* ``healthy`` ``(X, Y, Z)``: the lesion-free twin (same intensity augmentation);
* ``field`` ``(3, X, Y, Z)``: displacement in voxels of this grid, defined on the scan grid,
  ``healthy(x) = source(x + field(x))`` (backward warp of the healthy source brain);
* ``brain_mask`` ``(X, Y, Z)``: 0/1.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from napari_girnet.data.synthetic import SyntheticError, read_case

__all__ = ["CaseDataset", "TrainingCase", "iter_cases", "list_cases", "read_training_case"]

logger = logging.getLogger(__name__)

_SPLITS = ("train", "val", "all")


class TrainingCase(NamedTuple):
    """One case as float32 arrays (shapes in the module docstring)."""

    scan: np.ndarray
    mask: np.ndarray
    healthy: np.ndarray
    field: np.ndarray
    brain_mask: np.ndarray


def _manifest(folder: Path) -> dict[str, Any]:
    path = folder / "case.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SyntheticError(f"{path}: cannot read the manifest ({exc})") from exc
    if not isinstance(data, dict):
        raise SyntheticError(f"{path}: not a case manifest")
    return data


def list_cases(
    folder: str | os.PathLike[str], split: str = "train", kinds: tuple[str, ...] | None = None
) -> list[Path]:
    """Case folders of one split, sorted by name.

    Parameters
    ----------
    folder : path
        Folder holding ``case_*/case.json`` (other entries, e.g. ``_healthy_cache``, are
        ignored).
    split : str
        ``"train"``, ``"val"`` or ``"all"``; the ``split`` entry of ``case.json``.
    kinds : tuple of str or None
        Keep only these ``lesion_kind`` values (e.g. ``("tumour",)``); ``None`` = all.

    Returns
    -------
    list of pathlib.Path

    Raises
    ------
    SyntheticError
        Missing folder, bad split, or no case of that split in the folder.
    """
    root = Path(folder)
    if split not in _SPLITS:
        raise SyntheticError(f"split must be one of {_SPLITS}, got {split!r}")
    if not root.is_dir():
        raise SyntheticError(f"{root}: case folder not found")
    out = []
    for sub in sorted(root.iterdir()):
        if not (sub / "case.json").is_file():
            continue
        manifest = _manifest(sub)
        if split != "all" and manifest.get("split") != split:
            continue
        if kinds is not None and manifest.get("lesion_kind") not in kinds:
            continue
        out.append(sub)
    if not out:
        raise SyntheticError(f"{root}: no {split} case (case_*/case.json with split={split!r})")
    return out


def read_training_case(folder: str | os.PathLike[str]) -> TrainingCase:
    """Read one case folder as float32 arrays ``(scan, mask, healthy, field, brain_mask)``.

    Raises
    ------
    SyntheticError
        Missing or malformed files (:func:`~napari_girnet.data.synthetic.read_case`).
    """
    case = read_case(folder)
    return TrainingCase(
        np.asarray(case.scan.array, dtype=np.float32),
        np.asarray(case.lesion.array, dtype=np.float32),
        np.asarray(case.healthy.array, dtype=np.float32),
        np.ascontiguousarray(case.field, dtype=np.float32),
        np.asarray(case.brain_mask.array, dtype=np.float32),
    )


class CaseDataset:
    """Map-style dataset of the cases of one split (for ``torch.utils.data.DataLoader``).

    Parameters
    ----------
    folder : path
        Case folder (``girnet make-cases --out``).
    split : str
        ``"train"``, ``"val"`` or ``"all"``.
    kinds : tuple of str or None
        Lesion kinds to keep.

    Examples
    --------
    >>> ds = CaseDataset("runs/cases-2mm", "train")   # doctest: +SKIP
    >>> scan, mask, healthy, field, brain = ds[0]      # doctest: +SKIP
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        split: str = "train",
        kinds: tuple[str, ...] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.split = split
        self.paths = list_cases(folder, split, kinds)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> TrainingCase:
        return read_training_case(self.paths[index])

    def manifest(self, index: int) -> dict[str, Any]:
        """The ``case.json`` of case ``index``."""
        return _manifest(self.paths[index])


def iter_cases(
    folder: str | os.PathLike[str],
    split: str = "train",
    *,
    seed: int | None = None,
    epochs: int = 1,
    kinds: tuple[str, ...] | None = None,
) -> Iterator[TrainingCase]:
    """Yield the cases of a split, ``epochs`` times, shuffled per epoch when ``seed`` is set.

    Epoch ``e`` uses the order ``numpy.random.default_rng([seed, e]).permutation``; with
    ``seed=None`` the sorted order.
    """
    dataset = CaseDataset(folder, split, kinds)
    for epoch in range(int(epochs)):
        order = np.arange(len(dataset))
        if seed is not None:
            order = np.random.default_rng([int(seed), epoch]).permutation(len(dataset))
        for i in order:
            yield dataset[int(i)]
