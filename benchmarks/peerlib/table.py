"""Aggregation of per-case scores: summary table, girnet / ANTs ratios, Markdown, CSV, box plots.

A *row* is one registration: ``{"task", "case", "kind", "method", <metric>: float, ...}`` with
the metrics of :mod:`peerlib.scoring` plus ``wall_s`` (seconds), ``cpu_s`` (user + system CPU
seconds) and ``peak_rss_mb`` (MiB).
The summary is the mean over cases per (task, method), NaN-aware (a metric that is NaN for
every case stays NaN). Ratios divide a girnet method's summary by an ANTs method's summary,
metric by metric (lower is better for errors, time and memory; higher for Dice).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

METRICS: tuple[str, ...] = (
    "mde_in",
    "mde_near",
    "mde_far",
    "mde_brain",
    "label_dice",
    "fold_pct",
    "lesion_dice",
    "lesion_hd95",
    "wall_s",
    "cpu_s",
    "peak_rss_mb",
)
HEADERS: dict[str, str] = {
    "mde_in": "MDE in (mm)",
    "mde_near": "MDE near (mm)",
    "mde_far": "MDE far (mm)",
    "mde_brain": "MDE brain (mm)",
    "label_dice": "label Dice",
    "fold_pct": "det J<=0 (%)",
    "lesion_dice": "lesion Dice",
    "lesion_hd95": "lesion HD95 (mm)",
    "wall_s": "wall (s)",
    "cpu_s": "CPU (s)",
    "peak_rss_mb": "peak RSS (MiB)",
}
REGIONS: tuple[tuple[str, str], ...] = (
    ("mde_in", "in the lesion"),
    ("mde_near", "near (<= 30 mm)"),
    ("mde_far", "far (> 30 mm)"),
)


def _order(values: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def _nanmean(values: Sequence[float]) -> float:
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(finite)) if finite else float("nan")


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean of every metric over cases, per (task, method), in first-seen order.

    Returns rows ``{"task", "method", "n", <metric>: mean}``.
    """
    out = []
    for task in _order(r["task"] for r in rows):
        for method in _order(r["method"] for r in rows if r["task"] == task):
            sel = [r for r in rows if r["task"] == task and r["method"] == method]
            summary: dict[str, Any] = {"task": task, "method": method, "n": len(sel)}
            for m in METRICS:
                summary[m] = _nanmean([r.get(m, float("nan")) for r in sel])
            out.append(summary)
    return out


def ratios(
    summary: Sequence[dict[str, Any]], numerators: Sequence[str], denominators: Sequence[str]
) -> list[dict[str, Any]]:
    """``numerator / denominator`` of every metric, per task, for the pairs that exist.

    A zero or NaN denominator gives NaN. Returns rows ``{"task", "method": "A / B", ...}``.
    """
    out = []
    for task in _order(s["task"] for s in summary):
        by = {s["method"]: s for s in summary if s["task"] == task}
        for num in numerators:
            for den in denominators:
                if num not in by or den not in by:
                    continue
                row: dict[str, Any] = {"task": task, "method": f"{num} / {den}"}
                for m in METRICS:
                    a, b = float(by[num][m]), float(by[den][m])
                    row[m] = a / b if b != 0 and not math.isnan(b) else float("nan")
                out.append(row)
    return out


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell: ``-`` for NaN / None, fixed ``digits`` for floats."""
    if value is None:
        return "-"
    if isinstance(value, float | np.floating):
        if math.isnan(float(value)):
            return "-"
        return f"{float(value):.{digits}f}"
    return str(value)


def _digits(metric: str) -> int:
    return {
        "label_dice": 3,
        "lesion_dice": 3,
        "fold_pct": 3,
        "wall_s": 0,
        "cpu_s": 0,
        "peak_rss_mb": 0,
    }.get(metric, 2)


def markdown(rows: Sequence[dict[str, Any]], metrics: Sequence[str] = METRICS) -> str:
    """A GitHub Markdown table of ``rows`` (``task``, ``method``, then ``metrics``)."""
    head = ["task", "method", *(HEADERS.get(m, m) for m in metrics)]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * 2 + ["--:"] * len(metrics)) + "|",
    ]
    for r in rows:
        cells = [str(r["task"]), str(r["method"])] + [fmt(r.get(m), _digits(m)) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ratio_markdown(rows: Sequence[dict[str, Any]], metrics: Sequence[str] = METRICS) -> str:
    """Markdown of ratio rows (two decimals, ``-`` where undefined)."""
    head = ["task", "ratio", *(HEADERS.get(m, m) for m in metrics)]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * 2 + ["--:"] * len(metrics)) + "|",
    ]
    for r in rows:
        cells = [str(r["task"]), str(r["method"])] + [fmt(r.get(m), 2) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """CSV with a header of the union of the rows' keys (first-seen order); NaN as empty."""
    keys = _order(k for r in rows for k in r)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {
                    k: ""
                    if isinstance(r.get(k), float) and math.isnan(r[k])
                    else (f"{r[k]:.6g}" if isinstance(r.get(k), float) else r.get(k, ""))
                    for k in keys
                }
            )
    return path


def box_plot(rows: Sequence[dict[str, Any]], path: Path, task: str) -> Path:
    """Box plots of the per-case MDE in / near / far per method (like GIRNet's Fig. 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in rows if r["task"] == task]
    methods = _order(r["method"] for r in sel)
    fig, axes = plt.subplots(1, 3, figsize=(4.2 * 3, 4.2), sharey=True)
    for ax, (metric, title) in zip(axes, REGIONS, strict=True):
        data = [
            [r[metric] for r in sel if r["method"] == m and not math.isnan(r[metric])]
            for m in methods
        ]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(methods) + 1), methods, rotation=30, ha="right", fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("mean deformation error per case (mm)")
    fig.suptitle(f"{task} task: {len({r['case'] for r in sel})} cases")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
