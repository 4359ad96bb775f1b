"""Loading the model a registration applies: in memory, a checkpoint, the bundled weights, or
random weights built from the run's seed; and refusing one that does not fit the preset."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..core.checkpoint import Checkpoint, CheckpointError, file_sha256
from ..core.config import PRESETS, GIRNetConfig
from ..core.model import GIRNet

__all__ = [
    "RANDOM_MODEL",
    "RANDOM_REQUESTED",
    "LoadedModel",
    "ModelLike",
    "bundled_model_path",
    "load_model",
]

ModelLike = GIRNet | Checkpoint | str | os.PathLike | None

RANDOM_MODEL = "randomly initialised (no bundled model for this preset)"
RANDOM_REQUESTED = "randomly initialised (model='random')"


def bundled_model_path(preset_name: str) -> Path | None:
    """Path of the pretrained weights shipped for a preset
    (``napari_girnet/weights/<preset>.pt``), or None when none is bundled."""
    path = Path(__file__).resolve().parents[1] / "weights" / f"{preset_name}.pt"
    return path if path.is_file() else None


@dataclass(frozen=True)
class LoadedModel:
    """The model, its description and the SHA-256 of its file (None when not from a file)."""

    net: GIRNet
    description: str
    sha256: str | None

    @property
    def untrained(self) -> bool:
        """True for random weights (no bundled model for the preset, or ``model="random"``)."""
        return self.description in (RANDOM_MODEL, RANDOM_REQUESTED)


def load_model(model: ModelLike, cfg: GIRNetConfig, seed: int, *, explicit: bool) -> LoadedModel:
    """The model to apply with preset ``cfg``.

    Parameters
    ----------
    model : GIRNet, Checkpoint, path, "random" or None
        None: the bundled model of ``cfg.preset``, or random weights drawn from ``seed`` (a
        local generator; the global torch generator is left untouched) when none ships.
        ``"random"``: random weights even when a model ships (the pipeline without a trained
        model, e.g. as a benchmark row). A directory means its ``last.pt``.
    cfg : GIRNetConfig
        The requested configuration.
    seed : int
        Seed of the random weights (only used without a model).
    explicit : bool
        ``cfg`` was asked for by the caller (not taken from the model): a model whose networks,
        dimensionality or preset differ from it is refused.

    Raises
    ------
    CheckpointError
        ``model`` is not a model, checkpoint or path; the file is missing or corrupt; or the
        model does not match the requested preset (the message names the file and both presets).
    """
    if isinstance(model, GIRNet):
        loaded = LoadedModel(model, "in-memory model", None)
    elif isinstance(model, Checkpoint):
        loaded = LoadedModel(GIRNet.from_checkpoint(model), "checkpoint object", None)
    elif model is None:
        path = bundled_model_path(cfg.preset)
        if path is None:
            return LoadedModel(GIRNet(cfg, seed=seed), RANDOM_MODEL, None)
        loaded = LoadedModel(GIRNet.from_checkpoint(path), str(path), file_sha256(path))
    elif isinstance(model, str) and model == "random":
        return LoadedModel(GIRNet(cfg, seed=seed), RANDOM_REQUESTED, None)
    elif isinstance(model, str | os.PathLike):
        path = Path(model)
        if path.is_dir():
            path = path / "last.pt"
        loaded = LoadedModel(GIRNet.from_checkpoint(path), str(path), file_sha256(path))
    else:
        raise CheckpointError(
            f"model: expected a GIRNet, a Checkpoint or a checkpoint path, got "
            f"{type(model).__name__}"
        )
    if explicit:
        check_model_matches(loaded, cfg)
    return loaded


def check_model_matches(loaded: LoadedModel, cfg: GIRNetConfig) -> None:
    """Refuse a model whose networks, 2D/3D or named preset differ from ``cfg``'s.

    Raises
    ------
    CheckpointError
        Naming the model's file (or description) and both presets.
    """
    have = loaded.net.config
    named = have.preset in PRESETS and cfg.preset in PRESETS
    if (
        have.net != cfg.net
        or have.data.ndim != cfg.data.ndim
        or (named and have.preset != cfg.preset)
    ):
        raise CheckpointError(
            f"{loaded.description}: the model was made with preset {have.preset!r} "
            f"({have.data.ndim}D), which does not match the requested preset {cfg.preset!r} "
            f"({cfg.data.ndim}D); omit the preset to use the model's own"
        )
