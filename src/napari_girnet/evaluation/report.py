"""Reports: the :class:`Provenance` of a result, and evaluation results as JSON / CSV / table.

:class:`Provenance` is the one record of where a registration result came from; the API's
``report.json``, the CLI and the napari layers' metadata are all built from it.

A *results* mapping is a nested dict of metric values, e.g.::

    {
        "dice": 0.81,
        "hd95_mm": float("inf"),
        "mde_mm": {"in": {"mean": 2.1, "sd": 0.4, "n_voxels": 5321}, ...},
        "tre_mm": {"mean": 3.2, ..., "per_landmark": {"1": 2.5, "2": 4.0}},
    }

Values may be Python or numpy scalars, numpy arrays, lists/tuples, strings, booleans or None.
Flattening joins nested keys with ``"."``; list and array elements are keyed by their 0-based
position (pass a dict ``{landmark_id: value}`` to key per-landmark values by landmark id, e.g.
``tre_mm.per_landmark.<id>``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__

__all__ = ["Provenance", "flatten_results", "format_table", "write_report"]

logger = logging.getLogger(__name__)

_Scalar = float | int | bool | str | None


@dataclass(frozen=True)
class Provenance:
    """Where a registration result came from (JSON-ready through :meth:`to_dict`).

    Attributes
    ----------
    model : str
        ``"in-memory model"``, ``"checkpoint object"``, a checkpoint path, or the
        randomly-initialised description.
    model_sha256 : str or None
        SHA-256 of the model's checkpoint file (None when not loaded from a file).
    checkpoint, checkpoint_sha256 : str or None
        The checkpoint written by fine-tuning on this scan, and its SHA-256.
    seed, preset, config, device, precision, fine_tune_steps
        The run's settings (``config`` is ``GIRNetConfig.to_dict()``).
    instance_optimisation, lesion_detection : dict
        What the instance optimisation and the lesion detection did (sources, thresholds).
    preprocessing : dict
        What the "prepare" stage decided about brain extraction and bias-field correction, and
        why (:func:`napari_girnet.data.skullstrip.preprocess_raw`'s ``decision``).
    torch_version : str
        Version of torch that ran the networks.
    napari_girnet_version, python, created
        Filled in automatically.
    """

    model: str
    model_sha256: str | None
    seed: int
    preset: str
    config: dict[str, Any]
    device: str
    precision: str
    fine_tune_steps: int
    torch_version: str
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    instance_optimisation: dict[str, Any] = field(default_factory=dict)
    lesion_detection: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    napari_girnet_version: str = __version__
    python: str = field(default_factory=platform.python_version)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (nested dicts copied)."""
        return asdict(self)


def _scalar(value: Any, key: str) -> _Scalar:
    """Convert a leaf value to a Python scalar (non-finite floats stay non-finite)."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return _scalar(value.item(), key)
    raise ValueError(
        f"results[{key!r}]: cannot write a value of type {type(value).__name__} "
        "(expected numbers, strings, booleans, None, lists, arrays or dicts)"
    )


def _to_jsonable(value: Any, key: str) -> Any:
    """Recursively convert to JSON types; NaN and +-inf become None (JSON null)."""
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v, _join(key, k)) for k, v in value.items()}
    if isinstance(value, np.ndarray) and value.ndim > 0:
        return [_to_jsonable(v, _join(key, i)) for i, v in enumerate(value.tolist())]
    if isinstance(value, list | tuple):
        return [_to_jsonable(v, _join(key, i)) for i, v in enumerate(value)]
    s = _scalar(value, key)
    if isinstance(s, float) and not math.isfinite(s):
        return None
    return s


def _join(prefix: str, key: object) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def flatten_results(results: Mapping[str, Any]) -> dict[str, _Scalar]:
    """Flatten a nested results mapping to ``{"a.b.c": scalar}``.

    Parameters
    ----------
    results : Mapping
        Nested dict of metric values (see the module docstring).

    Returns
    -------
    dict
        Insertion-ordered flat mapping. Nested keys are joined with ``"."``; list/array elements
        get their 0-based index as key. Leaves become Python scalars (numpy scalars converted,
        NaN/inf kept as float). Empty nested dicts/lists produce no entry; an empty ``results``
        gives ``{}``.

    Raises
    ------
    ValueError
        ``results`` is not a mapping, or a leaf has an unsupported type (message names its key).
    """
    if not isinstance(results, Mapping):
        raise ValueError(f"results: expected a dict, got {type(results).__name__}")
    flat: dict[str, _Scalar] = {}

    def visit(value: Any, key: str) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                visit(v, _join(key, k))
        elif isinstance(value, np.ndarray) and value.ndim > 0:
            for i, v in enumerate(value.tolist()):
                visit(v, _join(key, i))
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                visit(v, _join(key, i))
        else:
            flat[key] = _scalar(value, key)

    for k, v in results.items():
        visit(v, str(k))
    return flat


def _csv_cell(value: _Scalar) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # round-trips exactly; 'nan', 'inf', '-inf' parse back with float()
    return str(value)


def write_report(
    results: Mapping[str, Any], json_path: str | Path, csv_path: str | Path | None = None
) -> None:
    """Write evaluation results to a JSON file and optionally a flat CSV file.

    Parameters
    ----------
    results : Mapping
        Nested dict of metric values (see the module docstring).
    json_path : str or pathlib.Path
        Output JSON path (parent folders are created). Written with ``indent=2``; numpy scalars
        and arrays become Python numbers and lists; **NaN and +-inf are written as ``null``**
        (strict JSON has no NaN/inf), so a reader cannot tell an empty-region NaN from an
        ``inf`` distance -- use the CSV for that.
    csv_path : str or pathlib.Path, optional
        Output CSV path (parent folders created): header ``metric,value`` then one row per flat
        metric (see :func:`flatten_results`), e.g. ``mde_mm.in.mean`` or
        ``tre_mm.per_landmark.<id>``. Floats are written with ``repr`` (exact round trip; NaN
        and infinities as ``nan``, ``inf``, ``-inf``, which ``float()`` parses), None as an
        empty cell, booleans as ``true``/``false``.

    Raises
    ------
    ValueError
        ``results`` is not a mapping or contains an unsupported value type.
    OSError
        A file cannot be written.
    """
    if not isinstance(results, Mapping):
        raise ValueError(f"results: expected a dict, got {type(results).__name__}")
    payload = _to_jsonable(results, "")
    flat = flatten_results(results) if csv_path is not None else None

    jpath = Path(json_path)
    jpath.parent.mkdir(parents=True, exist_ok=True)
    jpath.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    logger.info("wrote report %s", jpath)

    if csv_path is not None and flat is not None:
        cpath = Path(csv_path)
        cpath.parent.mkdir(parents=True, exist_ok=True)
        with cpath.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["metric", "value"])
            for key, value in flat.items():
                writer.writerow([key, _csv_cell(value)])
        logger.info("wrote report %s", cpath)


def _table_cell(value: _Scalar) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(results: Mapping[str, Any]) -> str:
    """Format the flat metrics of ``results`` as a two-column text table.

    Parameters
    ----------
    results : Mapping
        Nested dict of metric values (see the module docstring).

    Returns
    -------
    str
        Lines ``metric  value`` (header, a rule, one row per flat metric as in
        :func:`flatten_results`); floats with 4 significant digits (``nan``, ``inf``), None as
        ``null``. No trailing newline. An empty ``results`` gives ``"(no metrics)"``.

    Raises
    ------
    ValueError
        As :func:`flatten_results`.
    """
    flat = flatten_results(results)
    if not flat:
        return "(no metrics)"
    rows = [(k, _table_cell(v)) for k, v in flat.items()]
    w_key = max(len("metric"), *(len(k) for k, _ in rows))
    w_val = max(len("value"), *(len(v) for _, v in rows))
    lines = [f"{'metric':<{w_key}}  {'value':>{w_val}}", f"{'-' * w_key}  {'-' * w_val}"]
    lines += [f"{k:<{w_key}}  {v:>{w_val}}" for k, v in rows]
    return "\n".join(lines)
