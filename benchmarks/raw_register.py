"""``girnet register`` on a head with skull next to the same head skull-stripped.

Issue acceptance for raw scans: on Colin27 with skull (``ch2``) the alignment's brain Dice is
>= 0.95 and the false lesion volume is within 1 mL of the one on the reference skull-stripped
``ch2bet``. Each registration runs with the CLI defaults (``--skull-strip auto``) in this process;
the alignment Dice is the report's ``alignment.quality_brain_dice`` (brain-mask Dice with the
atlas after the affine, 3 mm). Colin27 is healthy, so any lesion volume is a false positive.

    python benchmarks/raw_register.py [--data-dir ../shared/data] [--out runs/raw-register]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from napari_girnet import api

ROOT = Path(__file__).resolve().parents[1]


def run(scan: Path, out: Path) -> dict:
    t0 = time.perf_counter()
    result = api.register(scan)
    result.save(out)
    report = json.loads((out / "report.json").read_text())
    return {
        "scan": scan.name,
        "stripped_here": bool(report["provenance"]["preprocessing"].get("extracted")),
        "reason": report["provenance"]["preprocessing"].get("reason"),
        "alignment_brain_dice": report["alignment"]["quality_brain_dice"],
        "false_lesion_ml": report["lesion_volume_mm3"] / 1000.0,
        "wall_s": time.perf_counter() - t0,
        "preprocess_s": report["provenance"]["preprocessing"].get("seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "raw-register")
    args = parser.parse_args()
    rows = [
        run(args.data_dir / "colin27" / name, args.out / name.split(".")[0])
        for name in ("ch2.nii.gz", "ch2bet.nii.gz")
    ]
    print("| scan | brain extracted here | alignment brain Dice | false lesion (mL) | wall (s) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['scan']} | {'yes' if r['stripped_here'] else 'no'} | "
            f"{r['alignment_brain_dice']:.3f} | {r['false_lesion_ml']:.2f} | {r['wall_s']:.0f} |"
        )
    diff = abs(rows[0]["false_lesion_ml"] - rows[1]["false_lesion_ml"])
    print(f"\nfalse lesion volume difference: {diff:.2f} mL (target <= 1 mL); decisions:")
    for r in rows:
        print(f"  {r['scan']}: {r['reason']} ({r['preprocess_s']})")


if __name__ == "__main__":
    main()
