"""Cohort registration: scan discovery, naming, truth pairing, failures in the table, resume."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from napari_girnet.cli import main
from napari_girnet.cohort import _unique_names, collect_scans, pair_truths, scan_stem

DATA = Path(__file__).resolve().parents[1] / "data"


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_collect_scans_from_folders_globs_and_bids(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    a, b = _touch(flat / "a.nii.gz"), _touch(flat / "b.nii")
    _touch(flat / "notes.txt")
    assert collect_scans([flat]) == [a, b]
    assert collect_scans([str(flat / "*.nii*"), a]) == [a, b]  # duplicates dropped
    bids = tmp_path / "bids"
    t1 = _touch(bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    t2 = _touch(bids / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T1w.nii.gz")
    _touch(bids / "sub-01" / "anat" / "sub-01_FLAIR.nii.gz")
    assert collect_scans([bids]) == [t1, t2]
    missing = tmp_path / "missing.nii.gz"
    assert collect_scans([missing]) == [missing]  # reported as a failed scan later
    with pytest.raises(ValueError, match="matches no file"):
        collect_scans([str(tmp_path / "*.mgz")])
    with pytest.raises(ValueError, match=r"empty.*no \.nii"):
        (tmp_path / "empty").mkdir()
        collect_scans([tmp_path / "empty"])


def test_names_are_unique_and_truths_pair_by_name(tmp_path: Path) -> None:
    scans = [Path("x/sub.nii.gz"), Path("y/sub.nii"), Path("z/SUB.nii.gz"), Path("w/t.img")]
    assert [scan_stem(s) for s in scans] == ["sub", "sub", "SUB", "t"]
    assert _unique_names(scans) == ["sub", "sub_2", "SUB_3", "t"]
    truth = tmp_path / "truth"
    _touch(truth / "sub.nii.gz")
    _touch(truth / "t_lesion.nii.gz")
    paired = pair_truths([Path("x/sub.nii.gz"), Path("w/t.img"), Path("q.nii")], truth)
    assert paired == [truth / "sub.nii.gz", truth / "t_lesion.nii.gz", None]
    with pytest.raises(NotADirectoryError):
        pair_truths(scans, tmp_path / "nope")


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as fh:
        return {row["name"]: row for row in csv.DictReader(fh)}


@pytest.mark.slow  # two tiny registrations: ~10 s alone, ~40 s on the loaded 2-core machine
def test_cli_cohort_reports_a_corrupt_scan_and_resumes(tmp_path: Path, capsys) -> None:
    scans, truth, out = tmp_path / "scans", tmp_path / "truth", tmp_path / "out"
    scans.mkdir()
    truth.mkdir()
    shutil.copy(DATA / "glioma_t1_3mm.nii.gz", scans / "glioma.nii.gz")
    shutil.copy(DATA / "ms07_t1_3mm.nii.gz", scans / "ms07.nii.gz")
    (scans / "broken.nii.gz").write_bytes(b"\x1f\x8b not really a NIfTI file" * 50)
    shutil.copy(DATA / "glioma_tumor_3mm.nii.gz", truth / "glioma_lesion.nii.gz")
    argv = [
        "register",
        str(scans),
        "--out",
        str(out),
        "--preset",
        "test",
        "--steps",
        "0",
        "--instance-steps",
        "0",
        "--pseudo-cases",
        "0",
        "--no-refine",
        "--truth-dir",
        str(truth),
        "--jobs",
        "2",
    ]
    assert main(argv) == 3  # some scans failed
    err = capsys.readouterr().err
    assert "broken.nii.gz" in err and "not a readable NIfTI" in err
    assert sorted(p.name for p in out.iterdir()) == ["cohort.csv", "cohort.json", "glioma", "ms07"]
    rows = _rows(out / "cohort.csv")
    assert [r["status"] for r in rows.values()] == ["failed", "ok", "ok"]  # input order
    assert "broken.nii.gz" in rows["broken"]["error"] and "\n" not in rows["broken"]["error"]
    assert rows["glioma"]["truth"].endswith("glioma_lesion.nii.gz")
    assert 0.0 < float(rows["glioma"]["dice"]) <= 1.0 and rows["ms07"]["dice"] == ""
    assert float(rows["ms07"]["lesion_volume_ml"]) > 0 and rows["ms07"]["mask_source"]
    dice = rows["glioma"]["dice"]
    stamps = {n: (out / n / "report.json").stat().st_mtime_ns for n in ("glioma", "ms07")}

    assert main([*argv, "--resume"]) == 3  # the broken scan is retried and fails again
    rows = _rows(out / "cohort.csv")
    assert [r["status"] for r in rows.values()] == ["failed", "skipped", "skipped"]
    assert rows["glioma"]["dice"] == dice  # read back from the finished report.json
    assert {n: (out / n / "report.json").stat().st_mtime_ns for n in stamps} == stamps
    assert "2 already done, 1 failed" in capsys.readouterr().out

    (scans / "broken.nii.gz").unlink()
    assert main([*argv, "--resume"]) == 0  # all succeeded (or were done): exit code 0
