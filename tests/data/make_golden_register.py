"""Write ``golden_register_glioma_3mm.json``: digests of every output of one reference run.

The run is the ``glioma_result`` fixture of ``tests/unit/test_api_cli.py`` (``test`` preset,
2 fine-tuning steps, 1 pseudo case, seed 0). The committed file was made with the code before
the ``register`` pipeline refactor; ``test_register_matches_the_golden_outputs`` checks that
the refactored code gives byte-identical arrays. Regenerate only for an intended change of the
results, with one torch thread on CPU (as the tests run)::

    OMP_NUM_THREADS=1 python tests/data/make_golden_register.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from napari_girnet import api

DATA = Path(__file__).resolve().parent
KEYS = (
    "lesion_probability",
    "lesion_mask",
    "inpainted",
    "atlas_to_scan",
    "jacobian",
    "scan_to_atlas",
    "field_atlas_to_scan",
    "field_scan_to_atlas",
    "field_nonlinear",
)


def main() -> None:
    torch.set_num_threads(1)
    res = api.register(
        DATA / "glioma_t1_3mm.nii.gz",
        config="test",
        fine_tune_steps=2,
        pseudo_cases=1,
        seed=0,
        truth=DATA / "glioma_tumor_3mm.nii.gz",
    )
    outputs = {}
    for key in KEYS:
        value = getattr(res, key)
        arr = np.ascontiguousarray(value.array if hasattr(value, "array") else value)
        outputs[key] = {
            "sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
            "dtype": str(arr.dtype),
            "shape": list(arr.shape),
            "sum": float(arr.astype(np.float64).sum()),
            "abs_sum": float(np.abs(arr.astype(np.float64)).sum()),
        }
    golden = {
        "run": "api.register(tests/data/glioma_t1_3mm.nii.gz, config='test', fine_tune_steps=2, "
        "pseudo_cases=1, seed=0, truth=tests/data/glioma_tumor_3mm.nii.gz); torch 1 thread, CPU",
        "outputs": outputs,
        "dice": res.metrics["dice"],
        "lesion_detection": dict(res.provenance["lesion_detection"]),
        "alignment": np.asarray(res.prepared.alignment.matrix).tolist(),
    }
    path = DATA / "golden_register_glioma_3mm.json"
    path.write_text(json.dumps(golden, indent=1, sort_keys=True, default=float) + "\n")
    print(f"wrote {path}")  # noqa: T201 - a script


if __name__ == "__main__":
    main()
