"""Each registration of the benchmark in a fresh subprocess, with wall time and peak RSS.

Methods (rows of the table):

* ``identity``: no registration (zero field); the floor every method must beat.
* ``ants``: ANTs SyN, the fixed setting of :data:`peerlib.worker.ANTS_SETTING`.
* ``ants-masked``: the same with cost-function masking: the fixed-image metric mask is the scan's
  brain minus the true lesion dilated by :data:`MASK_DILATION_VOX` voxels (an oracle: it needs
  the true lesion).
* ``girnet-untrained``: the GIRNet pipeline with ``--model random`` (randomly initialised
  networks, fine-tuned on the scan, instance optimisation, atlas-outlier lesion detector).
* ``girnet``: the same with ``--model PATH`` (default: the shipped model, applied without
  per-scan co-learning); skipped when no model ships and none is given.

Atlas task: GIRNet runs through the CLI, ``girnet register SCAN --out DIR --truth LESION
--threads T --seed 0 [--model PATH]``. Healthy task: the CLI's ``--atlas`` affinely re-aligns a
custom template, which would add an unknown affine to the exact truth, so the subprocess calls
the public API instead (``napari_girnet.api.register(scan, atlas=Atlas(healthy, mask))``,
``RegistrationResult.save``); see :mod:`peerlib.worker`. Wall time = ``time.perf_counter``
around the child (process start and imports included); peak RSS and CPU time (user + system
seconds) = GNU ``/usr/bin/time -f "%M %U %S"`` of the child (``ru_maxrss`` from ``os.wait4``
would also count this parent's memory, inherited at fork, so it is only the fallback when GNU
time is missing). Under a shared load CPU time is the steadier cost figure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

METHODS: tuple[str, ...] = ("identity", "ants", "ants-masked", "girnet-untrained", "girnet")
ANTS_METHODS: tuple[str, ...] = ("ants", "ants-masked")
GIRNET_METHODS: tuple[str, ...] = ("girnet", "girnet-untrained")
MASK_DILATION_VOX = 2
TIME_BIN = "/usr/bin/time"  # GNU time: peak RSS (%M, KiB) and CPU time (%U + %S) of the child
PEERLIB_PARENT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Job:
    """One registration: inputs, method and output folder."""

    task: str  # "healthy" or "atlas"
    method: str
    scan: Path
    reference: Path
    reference_mask: Path
    out: Path
    lesion: Path | None = None  # true lesion (girnet --truth)
    ants_mask: Path | None = None  # ants-masked only
    model: str | None = None
    instance_steps: int | None = None  # girnet rows: instance-optimisation steps (None: default)


@dataclass(frozen=True)
class Outcome:
    """What a job left: the field file (or None on failure), the tool's mask, cost, log."""

    field: Path | None
    lesion_mask: Path | None
    wall_s: float
    peak_rss_mb: float
    cpu_s: float  # user + system CPU seconds of the child (NaN without GNU time)
    returncode: int
    log: Path


def ants_mask(
    brain: np.ndarray, lesion: np.ndarray, dilation: int = MASK_DILATION_VOX
) -> np.ndarray:
    """Cost-function mask ``brain & ~dilate(lesion, dilation voxels)`` (6-connected steps)."""
    grown = ndi.binary_dilation(np.asarray(lesion, bool), iterations=int(dilation))
    return np.asarray(brain, bool) & ~grown


def parse_time_output(text: str) -> tuple[float, float]:
    """(peak RSS MiB, CPU s) from the last line of GNU time's ``-f "%M %U %S"`` output.

    Earlier lines (e.g. "Command exited with non-zero status 1") are ignored; a malformed
    last line gives NaNs.
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    try:
        kib, user, system = (float(v) for v in lines[-1].split())
    except (IndexError, ValueError):
        return float("nan"), float("nan")
    return kib / 1024.0, user + system


def girnet_exe() -> str:
    """The ``girnet`` console script of this interpreter's environment."""
    local = Path(sys.executable).with_name("girnet")
    if local.is_file():
        return str(local)
    found = shutil.which("girnet")
    if found is None:
        raise FileNotFoundError("the girnet command is not installed (pip install -e .)")
    return found


def command(job: Job, threads: int, seed: int = 0) -> list[str]:
    """The child's command line."""
    worker = [sys.executable, "-m", "peerlib.worker"]
    if job.method == "identity":
        return [*worker, "identity", "--scan", str(job.scan), "--out", str(job.out)]
    if job.method in ANTS_METHODS:
        cmd = [*worker, "ants", "--scan", str(job.scan), "--reference", str(job.reference)]
        if job.method == "ants-masked":
            if job.ants_mask is None:
                raise ValueError("ants-masked needs a mask")
            cmd += ["--mask", str(job.ants_mask)]
        return [*cmd, "--out", str(job.out)]
    if job.method not in GIRNET_METHODS:
        raise ValueError(f"unknown method {job.method!r}; valid: {', '.join(METHODS)}")
    if job.method == "girnet-untrained":
        model = ["--model", "random"]  # random weights even where a model ships
    else:
        model = ["--model", job.model] if job.model else []
    truth = ["--truth", str(job.lesion)] if job.lesion else []
    if job.instance_steps is not None:
        truth += ["--instance-steps", str(job.instance_steps)]
    if job.task == "atlas":
        return [
            girnet_exe(), "register", str(job.scan), "--out", str(job.out), "--threads",
            str(threads), "--seed", str(seed), *truth, *model,
        ]  # fmt: skip
    return [
        *worker, "girnet-api", "--scan", str(job.scan), "--reference", str(job.reference),
        "--reference-mask", str(job.reference_mask), "--out", str(job.out), "--threads",
        str(threads), "--seed", str(seed), *truth, *model,
    ]  # fmt: skip


def child_env(threads: int) -> dict[str, str]:
    """Environment of a child: thread counts pinned, ``peerlib`` importable."""
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        env[key] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PEERLIB_PARENT), *filter(None, [env.get("PYTHONPATH")])]
    )
    return env


def field_name(job: Job) -> str:
    return "field_atlas_to_scan.nii.gz" if job.method in GIRNET_METHODS else "field.nii.gz"


def run(
    job: Job, threads: int = 2, seed: int = 0, reuse: bool = True, score_only: bool = False
) -> Outcome:
    """Run ``job`` in a fresh process (or reuse a finished run of it); never raises on failure.

    ``score_only``: never start a process; a job without a finished run gives ``field=None``
    and ``returncode=-1``.
    """
    job.out.mkdir(parents=True, exist_ok=True)
    measure = job.out / "measure.json"
    log = job.out / "log.txt"
    field = job.out / field_name(job)
    mask = job.out / "lesion_mask.nii.gz"
    if reuse and measure.is_file() and field.is_file():
        m = json.loads(measure.read_text())
        cpu = float(m.get("cpu_s", float("nan")))
        return Outcome(
            field, mask if mask.is_file() else None, m["wall_s"], m["peak_rss_mb"], cpu, 0, log
        )
    if score_only:
        nan = float("nan")
        return Outcome(None, None, nan, nan, nan, -1, log)
    cmd = command(job, threads, seed)
    timer = Path(TIME_BIN)
    rss_file = job.out / "maxrss_kib.txt"
    rss_file.unlink(missing_ok=True)
    full = [str(timer), "-f", "%M %U %S", "-o", str(rss_file), *cmd] if timer.is_file() else cmd
    with log.open("w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, env=child_env(threads), stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    rss_mb = usage.ru_maxrss / 1024.0  # Linux: KiB; includes this process's RSS at fork
    cpu = usage.ru_utime + usage.ru_stime
    if rss_file.is_file():
        rss_mb, cpu = parse_time_output(rss_file.read_text())
    ok = proc.returncode == 0 and field.is_file()
    if ok:
        m = {"wall_s": wall, "peak_rss_mb": rss_mb, "cpu_s": cpu, "cmd": cmd}
        measure.write_text(json.dumps(m) + "\n")
    return Outcome(
        field if ok else None,
        mask if ok and mask.is_file() else None,
        wall,
        rss_mb,
        cpu,
        proc.returncode,
        log,
    )
