"""Safe, atomic checkpoints of a GIRNet model and its co-learning state.

A checkpoint is one file written with ``torch.save`` that holds only tensors, numbers, strings,
lists and dicts: network weights, optimizer and schedule state, the configuration as JSON and
provenance as JSON. It is loaded with ``torch.load(weights_only=True)``, which refuses any
pickled object that is not plain data — a checkpoint crafted to run code on load is rejected
with :class:`CheckpointError` instead of being executed. Writes go to a temporary file in the
same folder followed by an atomic rename, so an interrupted save never corrupts the previous
checkpoint; temporary files left by a save that was killed (``.last.pt.<pid>-<hex>.tmp``) are
removed by the next save or load in that folder once their writer is gone.

Loading refuses, with a one-line :class:`CheckpointError` naming the file: anything that is not a
PyTorch zip archive (random bytes, a NIfTI image), files over :data:`MAX_CHECKPOINT_BYTES`,
pickled objects other than plain data, a missing or newer format marker, and NaN or infinite
network weights. New files get the permissions ``0o666 & ~umask``, like any file the user
creates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import re
import secrets
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, GIRNetConfig

__all__ = [
    "FORMAT",
    "MAX_CHECKPOINT_BYTES",
    "Checkpoint",
    "CheckpointError",
    "file_sha256",
    "load_checkpoint",
    "remove_stale_temporaries",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

FORMAT = "napari-girnet-checkpoint"
FORMAT_VERSION = 1
MAX_CHECKPOINT_BYTES = 512 * 2**20
"""Largest checkpoint file (and total unpacked archive size) :func:`load_checkpoint` accepts.

The largest preset (``gpu-1mm``, 3.5 M parameters) gives a checkpoint of about 40 MiB with its
Adam state, so 512 MiB leaves room for wider networks while refusing a file padded with
gigabytes before any of it is read into memory (like the NIfTI reader's size check).
"""
STALE_TMP_SECONDS = 3600.0
"""Any temporary checkpoint file older than this is removed (the largest checkpoint is written in
seconds, so no save can still be running)."""
DEAD_WRITER_TMP_SECONDS = 60.0
"""A temporary checkpoint file whose writer process (the pid in its name) no longer exists is
removed once it is older than this."""

# ".<target>.pt.<pid>-<8 hex>.tmp" (this version) or ".<target>.pt.<8 chars>.tmp" (tempfile).
_TMP_RE = re.compile(r"^\.(?P<target>.+\.pt)\.(?:(?P<pid>\d+)-[0-9a-f]{8}|[a-z0-9_]{8})\.tmp$")


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

    The provenance gains ``saved_at`` (ISO time) and the napari-girnet/torch versions. The file
    is written to ``.<name>.<pid>-<hex>.tmp`` beside ``path``, fsynced and renamed over ``path``;
    it gets the permissions ``0o666 & ~umask``. Stale temporaries of killed saves in the folder
    are removed first (:func:`remove_stale_temporaries`).
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
    remove_stale_temporaries(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        # 0o666: the kernel applies the umask, as for any file the user creates
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.debug("checkpoint written: %s (step %d)", path, ckpt.step)
    return path


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may still be writing (True when it cannot be told)."""
    if pid == os.getpid() or os.name != "posix":  # os.kill(pid, 0) terminates it on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else, or cannot tell: keep the file
    return True


def remove_stale_temporaries(
    folder: str | os.PathLike[str], now: float | None = None
) -> list[Path]:
    """Delete temporary files of checkpoint saves that were killed half-way; returns them.

    Only names of the form written by :func:`save_checkpoint` (``.<name>.pt.<pid>-<hex>.tmp``,
    or ``.<name>.pt.<8 chars>.tmp`` from earlier versions) are touched, and only when they are
    older than :data:`STALE_TMP_SECONDS`, or older than :data:`DEAD_WRITER_TMP_SECONDS` when the
    process id in their name no longer exists (POSIX only). Errors
    (read-only folder, a file removed concurrently) are logged at debug level and ignored.
    """
    folder = Path(folder)
    now = time.time() if now is None else now
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TMP_RE.match(entry.name)
        if match is None:
            continue
        try:
            if not entry.is_file() or entry.is_symlink():
                continue
            age = now - entry.stat().st_mtime
            pid = match.group("pid")
            dead = pid is not None and age > DEAD_WRITER_TMP_SECONDS and not _pid_alive(int(pid))
            if age > STALE_TMP_SECONDS or dead:
                entry.unlink()
                removed.append(entry)
                log.info("removed the temporary file of an interrupted checkpoint save: %s", entry)
        except OSError as err:
            log.debug("could not remove %s: %s", entry, err)
    return removed


def _check_archive(path: Path) -> None:
    """Refuse files that are not PyTorch zip archives, or too large, before unpickling."""
    size = path.stat().st_size
    limit_mib = MAX_CHECKPOINT_BYTES / 2**20
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(
            f"{path}: file is {size / 2**20:.0f} MiB, more than any napari-girnet checkpoint "
            f"(limit {limit_mib:.0f} MiB); refusing to load it"
        )
    if path.name.lower().endswith((".nii", ".nii.gz")):
        raise CheckpointError(f"{path}: not a napari-girnet checkpoint (this is a NIfTI image)")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise CheckpointError(
            f"{path}: not a napari-girnet checkpoint (not a PyTorch zip archive)"
        ) from err
    unpacked = sum(m.file_size for m in members)
    if unpacked > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(
            f"{path}: archive unpacks to {unpacked / 2**20:.0f} MiB, more than any napari-girnet "
            f"checkpoint (limit {limit_mib:.0f} MiB); refusing to load it"
        )
    if not any(m.filename.endswith("data.pkl") for m in members):
        raise CheckpointError(f"{path}: not a napari-girnet checkpoint (no PyTorch data record)")


def _format_version(payload: dict[str, Any], path: Path) -> int:
    value = payload.get("format_version")
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(
            f"{path}: invalid checkpoint format_version {str(value)[:40]!r} (expected an integer)"
        )
    if value > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {value} is newer than this napari-girnet supports "
            f"({FORMAT_VERSION}); upgrade napari-girnet"
        )
    return value


def _check_weights(model: Any, path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Networks' state dicts: tensors only, every floating-point value finite."""
    if not isinstance(model, dict) or set(model) != {"reg", "seg", "inp"}:
        got = sorted(model) if isinstance(model, dict) else type(model).__name__
        raise CheckpointError(f"{path}: expected weights for reg, seg and inp, got {got}")
    for tag, state in model.items():
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: weights of {tag} are not a state dict")
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(
                    f"{path}: weight {tag}.{key} is a {type(value).__name__}, not a tensor"
                )
            if value.is_floating_point() or value.is_complex():
                n_bad = int(value.numel() - torch.isfinite(value).sum().item())
                if n_bad:
                    raise CheckpointError(
                        f"{path}: weight {tag}.{key} holds {n_bad} NaN or infinite values (of "
                        f"{math.prod(value.shape)}); the checkpoint is unusable (training "
                        "diverged?)"
                    )
    return model


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load a checkpoint safely (``weights_only``: plain data only, no code execution).

    Raises
    ------
    CheckpointError
        If the file is missing, larger than :data:`MAX_CHECKPOINT_BYTES`, truncated, not a
        napari-girnet checkpoint (random bytes, a NIfTI image, another program's pickle),
        contains anything but plain data (e.g. a malicious pickle), has a bad or newer
        ``format_version``, an invalid configuration, or NaN/infinite network weights. The
        message is one line and starts with the file name.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    remove_stale_temporaries(path.parent)
    _check_archive(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        log.debug("%s: torch.load refused the file: %s", path, err)
        raise CheckpointError(
            f"{path}: refused to load: not a napari-girnet checkpoint (it holds Python objects "
            "other than tensors and plain data)"
        ) from err
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        log.debug("%s: torch.load failed: %s", path, err)
        first = " ".join(str(err).split())[:120]
        raise CheckpointError(
            f"{path}: not a readable checkpoint (corrupt or truncated): {first}"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a napari-girnet checkpoint (format marker missing)")
    _format_version(payload, path)
    try:
        config = GIRNetConfig.from_json(payload["config"])
        provenance = json.loads(payload.get("provenance", "{}"))
        model = _check_weights(payload["model"], path)
        step = int(payload.get("step", 0))
    except CheckpointError:
        raise
    except (ConfigError, KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
        msg = " ".join(str(err).split())[:200]
        raise CheckpointError(f"{path}: invalid checkpoint contents: {msg}") from err
    return Checkpoint(
        config=config,
        model=model,
        step=step,
        trainer=payload.get("trainer", {}) or {},
        provenance=provenance,
    )
