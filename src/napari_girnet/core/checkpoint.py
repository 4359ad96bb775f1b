"""Safe, atomic checkpoints of a GIRNet model and its co-learning state.

A checkpoint is one file written with ``torch.save`` that holds only tensors, numbers, strings,
lists and dicts: network weights, optimizer and schedule state, the configuration as JSON and
provenance as JSON. It is loaded with ``torch.load(weights_only=True)``, which refuses any
pickled object that is not plain data — a checkpoint crafted to run code on load is rejected
with :class:`CheckpointError` instead of being executed. Writes go to a temporary file in the
same folder followed by an atomic rename, so an interrupted save never corrupts the previous
checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, GIRNetConfig

__all__ = [
    "FORMAT",
    "Checkpoint",
    "CheckpointError",
    "file_sha256",
    "load_checkpoint",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

FORMAT = "napari-girnet-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """Raised for a missing, corrupt, unsafe or incompatible checkpoint (message names the file)."""


@dataclass
class Checkpoint:
    """Contents of a checkpoint file.

    Attributes
    ----------
    config : GIRNetConfig
        Configuration the weights belong to.
    model : dict
        ``{"reg": state_dict, "seg": state_dict, "inp": state_dict}``.
    step : int
        Co-learning steps completed.
    trainer : dict
        Optimizer and schedule state (empty for a weights-only export).
    provenance : dict
        Version, creation time, device, seed, inputs, parent checkpoint hash, ...
    """

    config: GIRNetConfig
    model: dict[str, dict[str, torch.Tensor]]
    step: int = 0
    trainer: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file (streamed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike[str]) -> Path:
    """Write ``ckpt`` to ``path`` atomically; returns the path.

    The provenance gains ``saved_at`` (ISO time) and the napari-girnet/torch versions.
    """
    from .._version import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    provenance = dict(ckpt.provenance)
    provenance.setdefault("napari_girnet_version", __version__)
    provenance.setdefault("torch_version", torch.__version__)
    provenance["saved_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": ckpt.config.to_json(),
        "model": {k: {n: t.detach().cpu() for n, t in sd.items()} for k, sd in ckpt.model.items()},
        "step": int(ckpt.step),
        "trainer": ckpt.trainer,
        "provenance": json.dumps(provenance, default=str),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.debug("checkpoint written: %s (step %d)", path, ckpt.step)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load a checkpoint safely (``weights_only``: plain data only, no code execution).

    Raises
    ------
    CheckpointError
        If the file is missing, truncated, not a napari-girnet checkpoint, contains anything but
        plain data (e.g. a malicious pickle), or holds an invalid configuration.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to load: the file contains objects other than plain tensors and "
            f"data (possibly malicious); only napari-girnet checkpoints are accepted ({err})"
        ) from err
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(
            f"{path}: not a readable checkpoint (corrupt or truncated): {err}"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a napari-girnet checkpoint (format marker missing)")
    if int(payload.get("format_version", -1)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {payload['format_version']} is newer than this "
            f"napari-girnet supports ({FORMAT_VERSION}); upgrade napari-girnet"
        )
    try:
        config = GIRNetConfig.from_json(payload["config"])
        provenance = json.loads(payload.get("provenance", "{}"))
        model = payload["model"]
        if set(model) != {"reg", "seg", "inp"}:
            raise CheckpointError(
                f"{path}: expected weights for reg, seg and inp, got {sorted(model)}"
            )
    except (ConfigError, KeyError, TypeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: invalid checkpoint contents: {err}") from err
    return Checkpoint(
        config=config,
        model=model,
        step=int(payload.get("step", 0)),
        trainer=payload.get("trainer", {}) or {},
        provenance=provenance,
    )
