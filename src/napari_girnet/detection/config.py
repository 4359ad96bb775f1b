"""Settings of lesion detection at inference (:class:`InferenceConfig`).

The dataclass is defined with the other configuration sections in
:mod:`napari_girnet.core.config` because it is a section of
:class:`~napari_girnet.core.config.GIRNetConfig`: configs and checkpoints carry it, round-trip it
through JSON, and old configs without it load with the defaults. ``core`` may not import
``detection`` (import-linter contract), so this module is its public home and re-exports it;
:func:`resolve_inference` is the one way to override it (an ``InferenceConfig`` or a dict).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from ..core.config import ConfigError, InferenceConfig

__all__ = ["InferenceConfig", "resolve_inference"]


def resolve_inference(
    base: InferenceConfig, override: InferenceConfig | Mapping[str, Any] | None
) -> InferenceConfig:
    """``base`` with ``override`` applied: a whole :class:`InferenceConfig` or a dict of fields.

    Raises
    ------
    ConfigError
        Unknown field, or a value that fails :meth:`InferenceConfig.validate`.
    """
    if override is None:
        return base
    if isinstance(override, InferenceConfig):
        override.validate()
        return override
    if not isinstance(override, Mapping):
        raise ConfigError(
            f"inference: expected an InferenceConfig or a dict, got {type(override).__name__}"
        )
    values = asdict(base)
    unknown = sorted(set(override) - set(values))
    if unknown:
        raise ConfigError(f"inference: unknown option(s) {unknown}; choose from {sorted(values)}")
    values.update(override)
    cfg = InferenceConfig(**values)
    cfg.validate()
    return cfg
