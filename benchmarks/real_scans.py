"""`girnet register` on real native scans: Dice, HD95, false lesion volume, wall time, memory.

    python benchmarks/real_scans.py [--data-dir ../shared/data] [--out runs/real] [--preset cpu-2mm]

Runs the CLI exactly as a user would (a subprocess per scan, default settings of the preset: the
bundled model applied as is, or random weights fine-tuned on the scan when none ships), then
prints the table from each ``report.json`` with the peak resident memory of the subprocess (GNU
``/usr/bin/time``). None of these scans is used in training. Colin27 (``ch2bet``) and the two
neurite-OASIS example brains of the public SymNet repository (``oasisA``, ``oasisB``; 1 mm,
LIA, skull-stripped) are healthy: whatever mask they get is a false positive.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    "ms07": (
        "ms-lesions/patient07/T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
        "ms-lesions/patient07/GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz",
    ),
    "glioma": (
        "glioma-tcga-du-7294/TCGA-DU-7294_t1_bet.nii.gz",
        "glioma-tcga-du-7294/TCGA-DU-7294_tumor_seg_fusion.nii.gz",
    ),
    "colin27": ("colin27/ch2bet.nii.gz", None),  # healthy: any mask is a false positive
    "oasisA": ("../weights/symnet-oasis/oasis_image_A.nii.gz", None),  # healthy
    "oasisB": ("../weights/symnet-oasis/oasis_image_B.nii.gz", None),  # healthy
    "ms19": (
        "ms-lesions/patient19/T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
        "ms-lesions/patient19/GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz",
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    parser.add_argument("--out", default="runs/real")
    parser.add_argument("--preset", default="cpu-2mm")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument(
        "--extra",
        nargs=argparse.REMAINDER,
        default=[],
        help="extra arguments passed to girnet register",
    )
    args = parser.parse_args()
    data = Path(args.data_dir)
    rows = []
    for name in args.cases:
        scan_rel, truth_rel = CASES[name]
        scan = data / scan_rel
        out = Path(args.out) / name
        cmd = [
            sys.executable,
            "-m",
            "napari_girnet.cli",
            "register",
            str(scan),
            "--out",
            str(out),
            "--preset",
            args.preset,
            "--qc",
            *args.extra,
        ]
        if truth_rel is not None:
            cmd += ["--truth", str(data / truth_rel)]
        print("$", " ".join(cmd), flush=True)
        timer = Path(args.out) / f"{name}.time"
        timer.parent.mkdir(parents=True, exist_ok=True)
        gnu_time = ["/usr/bin/time", "-f", "%M", "-o", str(timer)]
        t0 = time.perf_counter()
        code = subprocess.call((gnu_time if Path(gnu_time[0]).is_file() else []) + cmd)
        wall = time.perf_counter() - t0
        rss = f"{int(timer.read_text().split()[-1]) / 1024:.0f}" if timer.is_file() else "?"
        if code != 0:
            rows.append((name, f"failed (exit {code})", "", "", "", f"{wall:.0f}", rss))
            continue
        rep = json.loads((out / "report.json").read_text())
        m = rep["metrics"]
        pred_ml = rep["lesion_volume_mm3"] / 1000
        if not m:  # healthy scan, no truth
            rows.append((name, "-", "-", f"{pred_ml:.1f}", "0 (healthy)", f"{wall:.0f}", rss))
            continue
        rows.append(
            (
                name,
                f"{m['dice']:.3f}",
                f"{m['hd95_mm']:.1f}" if m["hd95_mm"] else "inf",
                f"{pred_ml:.1f}",
                f"{m['truth_volume_mm3'] / 1000:.1f}",
                f"{wall:.0f}",
                rss,
            )
        )
    print("\n| case | Dice | HD95 (mm) | predicted (mL) | truth (mL) | wall (s) | peak RSS (MiB) |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
