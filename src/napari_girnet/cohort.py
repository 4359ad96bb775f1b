"""Registration of a whole cohort: many scans, one model, one summary table.

:func:`register_many` runs :func:`napari_girnet.api.register` on every scan with the model
loaded once, in a bounded pool of worker threads (torch's CPU threads divided between them),
writes each scan's outputs to ``<out_dir>/<scan name>/`` (a temporary sibling folder renamed into
place when complete, :meth:`~napari_girnet.api.RegistrationResult.save`) and keeps
``<out_dir>/cohort.csv`` up to date after every scan (``cohort.json`` names the model file and its
SHA-256). A scan that fails gets its one-line error
in the table; the others go on. :func:`collect_scans` expands paths, globs, folders and BIDS
datasets (``sub-*/[ses-*/]anat/*_T1w.nii[.gz]``) into a list of scans.

Typical use::

    import napari_girnet as ng

    for row in ng.register_many(["sub-01.nii.gz", "sub-02.nii.gz"], "out/", jobs=2):
        print(row.name, row.status, row.lesion_volume_ml, row.error)
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import api
from ._version import __version__
from .core.checkpoint import file_sha256, load_checkpoint

__all__ = [
    "CSV_COLUMNS",
    "CohortScan",
    "ScanOutcome",
    "collect_scans",
    "pair_truths",
    "register_many",
    "scan_stem",
]

log = logging.getLogger(__name__)

CSV_COLUMNS = (
    "scan",
    "name",
    "status",
    "lesion_volume_ml",
    "dice",
    "mask_source",
    "wall_time_s",
    "truth",
    "error",
)
"""Columns of ``cohort.csv`` (one row per scan, in input order)."""

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_GLOB_CHARS = set("*?[")


def scan_stem(path: str | os.PathLike[str]) -> str:
    """File name without ``.nii.gz`` / ``.nii`` (or any last suffix): ``sub-01_T1w``."""
    name = Path(path).name
    for suffix in _NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem or name


def _niftis(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(_NIFTI_SUFFIXES)
    )


def _bids_t1w(folder: Path) -> list[Path]:
    found: list[Path] = []
    for pattern in ("sub-*/anat/*_T1w.nii*", "sub-*/ses-*/anat/*_T1w.nii*"):
        found += [p for p in folder.glob(pattern) if p.name.endswith(_NIFTI_SUFFIXES)]
    return sorted(found)


def collect_scans(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand scan paths, globs, folders and BIDS datasets into a list of scan files.

    A folder holding ``sub-*`` sub-folders is read as a BIDS dataset (its
    ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]``); any other folder gives its ``.nii``/``.nii.gz``
    files (not recursive). Globs are expanded (sorted). Plain paths are kept as given, even
    when missing (:func:`register_many` reports them as failed). Duplicates are dropped.

    Raises
    ------
    ValueError
        If a glob or a folder yields no scan, or nothing was given.
    """
    scans: list[Path] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            bids = any(p.is_dir() for p in path.glob("sub-*"))
            found = _bids_t1w(path) if bids else _niftis(path)
            if not found:
                what = "no sub-*/anat/*_T1w.nii[.gz]" if bids else "no .nii or .nii.gz file"
                raise ValueError(f"{path}: {what} in this folder")
            scans += found
        elif _GLOB_CHARS & set(text) and not path.exists():
            found = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
            if not found:
                raise ValueError(f"{text}: the pattern matches no file")
            scans += found
        else:
            scans.append(path)
    if not scans:
        raise ValueError("no scan given")
    unique: dict[str, Path] = {}
    for s in scans:
        unique.setdefault(os.path.abspath(s), s)
    return list(unique.values())


def pair_truths(
    scans: Sequence[Path], truth_dir: str | os.PathLike[str] | None
) -> list[Path | None]:
    """Ground-truth mask of each scan in ``truth_dir``, paired by name: the same file name, or
    ``<stem>_lesion.nii[.gz]`` (``<stem>`` from :func:`scan_stem`); None when absent."""
    if truth_dir is None:
        return [None] * len(scans)
    folder = Path(truth_dir)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: --truth-dir is not a folder")
    out: list[Path | None] = []
    for scan in scans:
        stem = scan_stem(scan)
        names = [scan.name, *(f"{stem}_lesion{s}" for s in _NIFTI_SUFFIXES)]
        out.append(next((folder / n for n in names if (folder / n).is_file()), None))
    return out


def _unique_names(scans: Sequence[Path]) -> list[str]:
    """Output folder names: each scan's stem, ``_2``, ``_3``, ... appended on collisions (in
    input order, case-insensitively, so that they are also unique on macOS/Windows)."""
    taken: set[str] = set()
    names = []
    for scan in scans:
        base = scan_stem(scan) or "scan"
        name, k = base, 1
        while name.lower() in taken or name.lower() in ("cohort.csv", "cohort.json"):
            k += 1
            name = f"{base}_{k}"
        taken.add(name.lower())
        names.append(name)
    return names


@dataclass(frozen=True)
class CohortScan:
    """One scan of the cohort: input file, output folder name and paired truth (or None)."""

    scan: Path
    name: str
    truth: Path | None = None


@dataclass
class ScanOutcome:
    """What :func:`register_many` reports for one scan (one row of ``cohort.csv``).

    ``status`` is ``"ok"``, ``"failed"`` (``error`` holds the one-line reason) or ``"skipped"``
    (``resume`` found a complete output folder; its values are read back from ``report.json``).
    ``lesion_volume_ml`` in mL on the scan's grid; ``dice`` only with a paired truth;
    ``mask_source`` is the detector that made the mask (e.g. ``segnet`` or
    ``atlas-outlier``); ``wall_time_s`` the scan's wall time in seconds.
    """

    scan: Path
    name: str
    out_dir: Path
    status: str
    lesion_volume_ml: float | None = None
    dice: float | None = None
    mask_source: str | None = None
    wall_time_s: float = 0.0
    truth: Path | None = None
    error: str | None = None
    report: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "skipped")

    def row(self) -> dict[str, str]:
        def num(x: float | None, fmt: str) -> str:
            return "" if x is None else format(x, fmt)

        return {
            "scan": str(self.scan),
            "name": self.name,
            "status": self.status,
            "lesion_volume_ml": num(self.lesion_volume_ml, ".3f"),
            "dice": num(self.dice, ".4f"),
            "mask_source": self.mask_source or "",
            "wall_time_s": num(self.wall_time_s, ".1f"),
            "truth": "" if self.truth is None else str(self.truth),
            "error": self.error or "",
        }


def _mask_source(report: dict[str, Any]) -> str | None:
    det = (report.get("provenance") or {}).get("lesion_detection") or {}
    source = det.get("source")
    return source if isinstance(source, str) else None


def _from_report(item: CohortScan, out: Path, report: dict[str, Any], status: str) -> ScanOutcome:
    metrics = report.get("metrics") or {}
    volume = report.get("lesion_volume_mm3")
    timings = report.get("timings_s") or {}
    return ScanOutcome(
        scan=item.scan,
        name=item.name,
        out_dir=out,
        status=status,
        lesion_volume_ml=None if volume is None else float(volume) / 1000.0,
        dice=float(metrics["dice"]) if "dice" in metrics else None,
        mask_source=_mask_source(report),
        wall_time_s=float(timings.get("total_s", 0.0)),
        truth=item.truth,
        report=report,
    )


def completed_report(out: Path) -> dict[str, Any] | None:
    """The ``report.json`` of a complete output folder, or None (missing or unreadable)."""
    try:
        report = json.loads((out / "report.json").read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, ValueError | OSError) else f"{type(err).__name__}: {text}"


def _write_csv(path: Path, outcomes: Sequence[ScanOutcome]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for o in outcomes:
            writer.writerow(o.row())
    os.replace(tmp, path)


def _load_model_once(model: api.ModelLike, config: Any) -> tuple[api.ModelLike, dict[str, Any]]:
    """The model to share and its description (file, SHA-256) for ``cohort.json``.

    A path (or a run folder's ``last.pt``) is read once into a
    :class:`~napari_girnet.core.checkpoint.Checkpoint`; each scan then builds its own networks
    from it, so fine-tuning one scan never changes another's model. (Each scan's report.json
    then names the model "checkpoint object"; ``cohort.json`` records the file and its hash.)
    """
    path: Path | None = None
    if model is None:
        path = api.bundled_model_path(api.resolve_config(config).preset)
    elif isinstance(model, str | os.PathLike):
        path = Path(model)
        path = path / "last.pt" if path.is_dir() else path
    if path is None:
        what = "random weights from the seed" if model is None else type(model).__name__
        return model, {"model": what, "model_sha256": None}
    return load_checkpoint(path), {"model": str(path), "model_sha256": file_sha256(path)}


def register_many(
    scans: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    jobs: int = 1,
    resume: bool = False,
    truth_dir: str | os.PathLike[str] | None = None,
    model: api.ModelLike = None,
    config: Any = None,
    threads: int | None = None,
    progress: Callable[[ScanOutcome, int, int], None] | None = None,
    after_save: Callable[[api.RegistrationResult, Path], None] | None = None,
    **register_kwargs: Any,
) -> Iterator[ScanOutcome]:
    """Register every scan with one model; yield one :class:`ScanOutcome` per scan.

    Parameters
    ----------
    scans : sequence of path, glob or folder
        Expanded by :func:`collect_scans`.
    out_dir : path
        Receives one folder per scan, named after the scan file without extension (``_2``,
        ``_3`` ... appended on collisions), and ``cohort.csv`` (:data:`CSV_COLUMNS`, input order).
    jobs : int
        Scans registered at once (worker threads sharing the loaded model); torch's CPU
        threads (``threads``, default all) are divided between them.
    resume : bool
        Skip scans whose output folder already holds a complete ``report.json``.
    truth_dir : path, optional
        Ground-truth masks paired by name (:func:`pair_truths`): adds Dice to the table.
    model, config, register_kwargs
        Passed to :func:`napari_girnet.api.register` (``atlas``, ``fine_tune_steps``, ``seed``,
        ...); a model path is read once (a :class:`~napari_girnet.core.checkpoint.Checkpoint`
        shared by all scans).
    progress : callable, optional
        ``progress(outcome, done, total)`` after every scan (called from this generator).
    after_save : callable, optional
        ``after_save(result, out_path)`` called in the worker after a scan's outputs are in
        place (e.g. to add a QC image).

    Yields
    ------
    ScanOutcome
        In completion order; outcomes of skipped scans first.

    Raises
    ------
    ValueError, OSError
        Bad arguments (no scan, a glob matching nothing, ``jobs < 1``), an unreadable model, or an
        ``out_dir`` that is a file. Errors of single scans are reported, not raised.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    files = collect_scans(scans)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    truths = pair_truths(files, truth_dir)
    items = [
        CohortScan(f, n, t) for f, n, t in zip(files, _unique_names(files), truths, strict=True)
    ]
    shared, model_info = _load_model_once(model, config)
    (out / "cohort.json").write_text(
        json.dumps({**model_info, "napari_girnet_version": __version__, "scans": len(items)})
    )
    total_threads = threads or torch.get_num_threads()
    per_worker = max(1, total_threads // jobs)
    outcomes: dict[int, ScanOutcome] = {}
    csv_path = out / "cohort.csv"

    def record(i: int, outcome: ScanOutcome) -> ScanOutcome:
        outcomes[i] = outcome
        _write_csv(csv_path, [outcomes[k] for k in sorted(outcomes)])
        if progress is not None:
            progress(outcome, len(outcomes), len(items))
        return outcome

    def work(item: CohortScan) -> ScanOutcome:
        torch.set_num_threads(per_worker)
        target = out / item.name
        t0 = time.perf_counter()
        try:
            result = api.register(
                item.scan, model=shared, config=config, truth=item.truth, **register_kwargs
            )
            result.save(target)  # staged: the folder appears only when complete
            if after_save is not None:
                after_save(result, target)
            report = result.report()
        except Exception as err:  # one bad scan must not stop the cohort
            log.info("%s: failed: %s", item.scan, _one_line(err))  # reported in the outcome
            return ScanOutcome(
                scan=item.scan,
                name=item.name,
                out_dir=target,
                status="failed",
                wall_time_s=time.perf_counter() - t0,
                truth=item.truth,
                error=_one_line(err),
            )
        outcome = _from_report(item, target, report, "ok")
        outcome.wall_time_s = time.perf_counter() - t0
        return outcome

    pending: list[int] = []
    for i, item in enumerate(items):
        done = completed_report(out / item.name) if resume else None
        if done is not None:
            yield record(i, _from_report(item, out / item.name, done, "skipped"))
        else:
            pending.append(i)
    if not pending:
        return
    previous_threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="girnet-cohort") as pool:
            queue = iter(pending)
            running: dict[Future[ScanOutcome], int] = {}

            def submit_next() -> None:
                i = next(queue, None)
                if i is not None:
                    running[pool.submit(work, items[i])] = i

            for _ in range(jobs):  # bounded: at most `jobs` scans in memory at once
                submit_next()
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = running.pop(fut)
                    submit_next()
                    yield record(i, fut.result())
    finally:
        torch.set_num_threads(previous_threads)
