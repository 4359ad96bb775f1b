"""`girnet register` on the real native scans of ../shared/data: Dice, HD95 and wall time.

    python benchmarks/real_scans.py [--data-dir ../shared/data] [--out runs/real] [--preset cpu-2mm]

Runs the CLI exactly as a user would (a subprocess per scan, default settings of the preset: the
bundled model, or random weights, fine-tuned on the scan), then prints the table from each
``report.json``. Colin27 is a healthy brain: whatever mask it gets is a false positive.
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
    parser.add_argument(
        "--cases", nargs="+", default=["glioma", "ms07", "ms19", "colin27"], choices=list(CASES)
    )
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
        t0 = time.perf_counter()
        code = subprocess.call(cmd)
        wall = time.perf_counter() - t0
        if code != 0:
            rows.append((name, f"failed (exit {code})", "", "", "", f"{wall:.0f}"))
            continue
        rep = json.loads((out / "report.json").read_text())
        m = rep["metrics"]
        pred_ml = rep["lesion_volume_mm3"] / 1000
        if not m:  # healthy scan, no truth
            rows.append((name, "-", "-", f"{pred_ml:.1f}", "0 (healthy)", f"{wall:.0f}"))
            continue
        rows.append(
            (
                name,
                f"{m['dice']:.3f}",
                f"{m['hd95_mm']:.1f}" if m["hd95_mm"] else "inf",
                f"{pred_ml:.1f}",
                f"{m['truth_volume_mm3'] / 1000:.1f}",
                f"{wall:.0f}",
            )
        )
    print(f"\n{'case':<8} {'Dice':>6} {'HD95 mm':>8} {'pred mL':>8} {'truth mL':>9} {'wall s':>7}")
    for row in rows:
        print(f"{row[0]:<8} {row[1]:>6} {row[2]:>8} {row[3]:>8} {row[4]:>9} {row[5]:>7}")


if __name__ == "__main__":
    main()
