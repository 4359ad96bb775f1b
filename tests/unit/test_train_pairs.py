"""Longitudinal co-learning (``fit(fixed=...)``, ``girnet train --pair/--pairs``) on the 3 mm
fixtures: each pre-operative scan is registered to its own follow-up, GIRNet's BraTS-Reg setting.
The fixtures stand in for pre/post scans (different patients: only the pairing is tested)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from napari_girnet.cli import main
from napari_girnet.core.checkpoint import load_checkpoint
from napari_girnet.pipeline.inputs import prepare, to_tensor
from napari_girnet.pipeline.training import fit, read_pairs_csv, training_items

DATA = Path(__file__).resolve().parents[1] / "data"
GLIOMA = DATA / "glioma_t1_3mm.nii.gz"
MS07 = DATA / "ms07_t1_3mm.nii.gz"
COLIN = DATA / "colin27_3mm.nii.gz"


def _index_of(scan: torch.Tensor, candidates: list[torch.Tensor]) -> int:
    hits = [i for i, c in enumerate(candidates) if torch.equal(scan, c)]
    assert len(hits) == 1, hits
    return hits[0]


def test_sampler_gives_each_scan_its_own_follow_up_and_pseudo_cases_the_atlas():
    session = fit(
        [GLIOMA, MS07],
        fixed=[MS07, COLIN],
        config="test",
        pseudo_cases=1,
        steps=1,
        seed=0,
        preview=False,
    )
    assert session.task == "longitudinal" and len(session.fixed) == 2
    prov = session.learner.provenance
    assert prov["task"] == "longitudinal"
    assert prov["inputs"] == [session.prepared[0].native.name, session.prepared[1].native.name]
    assert prov["fixed"] == [session.fixed[0].native.name, session.fixed[1].native.name]
    moving = [to_tensor(p.image) for p in session.prepared]
    follow_ups = [to_tensor(f.image) for f in session.fixed]
    mni = to_tensor(session.atlas.image)
    assert not torch.equal(follow_ups[0], follow_ups[1])
    assert not any(torch.equal(f, mni) for f in follow_ups)
    sampler = session.learner.sampler
    seen: set[int | str] = set()
    for step in range(9):  # three epochs of the three items
        scan, atlas = sampler(step)
        assert scan.shape == atlas.shape == (1, 1, 32, 32, 32)
        pseudo = not any(torch.equal(scan[0], m) for m in moving)
        if pseudo:
            assert torch.equal(atlas[0], mni)
            seen.add("pseudo")
        else:
            i = _index_of(scan[0], moving)
            assert torch.equal(atlas[0], follow_ups[i])
            seen.add(i)
    assert seen == {0, 1, "pseudo"}
    for i in range(2):  # the preview maps onto the scan's own follow-up
        assert session.atlases[i].image.same_grid(session.atlas.image)
        assert torch.equal(to_tensor(session.atlases[i].image), follow_ups[i])


def test_2d_items_pair_each_slice_with_its_own_follow_up():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand((1, 8, 8, 4), generator=g) + 0.1 for _ in range(2)]
    follow_ups = [torch.rand((1, 8, 8, 4), generator=g) + 0.1 for _ in range(2)]
    scans, atlases = training_items(images, follow_ups, ndim=2)
    assert len(scans) == len(atlases) == 8
    for s, a in zip(scans, atlases, strict=True):
        i = next(i for i in range(2) if any(torch.equal(s, images[i][..., z]) for z in range(4)))
        z = next(z for z in range(4) if torch.equal(s, images[i][..., z]))
        assert torch.equal(a, follow_ups[i][..., z])
    with pytest.raises(ValueError, match="3 atlases for 2 scans"):
        training_items(images, [*follow_ups, follow_ups[0]], ndim=3)


def test_mismatched_pair_lengths_are_refused():
    with pytest.raises(ValueError, match=r"^[^\n]*2 scans and 1 fixed scans$"):
        fit([GLIOMA, MS07], fixed=[COLIN], config="test")
    with pytest.raises(ValueError, match="0 scans and 0 fixed"):
        fit([], fixed=[], config="test", pseudo_cases=1)
    with pytest.raises(ValueError, match="skull_strip must be one of"):
        fit([GLIOMA], fixed=[COLIN], config="test", skull_strip="maybe")
    prepared = prepare(GLIOMA, config="test")  # pairs are prepared together, not one by one
    with pytest.raises(ValueError, match="not prepared scans"):
        fit([prepared], fixed=[COLIN], config="test")


def _link_fixtures(folder: Path) -> None:
    folder.mkdir()
    for f in (GLIOMA, MS07, COLIN):
        (folder / f.name).symlink_to(f)


def test_pairs_csv_relative_paths_comments_and_bad_lines(tmp_path, capsys):
    _link_fixtures(tmp_path / "scans")
    good = tmp_path / "pairs.csv"
    good.write_text(
        "patient,moving,fixed\n"
        "# pre-operative, follow-up\n"
        f"p1,scans/{GLIOMA.name},scans/{MS07.name}\n"
        "\n"
        f"p2,{tmp_path / 'scans' / MS07.name},scans/{COLIN.name}\n"
    )
    assert read_pairs_csv(good) == [
        (tmp_path / "scans" / GLIOMA.name, tmp_path / "scans" / MS07.name),
        (tmp_path / "scans" / MS07.name, tmp_path / "scans" / COLIN.name),
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text(f"moving,fixed\nscans/{GLIOMA.name},scans/{MS07.name}\nscans/pre.nii.gz,x\n")
    with pytest.raises(ValueError, match=r"bad\.csv line 3: moving scan 'scans/pre\.nii\.gz'"):
        read_pairs_csv(bad)
    empty_cell = tmp_path / "empty.csv"
    empty_cell.write_text(f"moving,fixed\nscans/{GLIOMA.name},\n")
    with pytest.raises(ValueError, match=r"empty\.csv line 2: empty 'fixed' column"):
        read_pairs_csv(empty_cell)
    no_header = tmp_path / "noheader.csv"
    no_header.write_text(f"scans/{GLIOMA.name},scans/{MS07.name}\n")
    with pytest.raises(ValueError, match=r"noheader\.csv line 1: the header must name"):
        read_pairs_csv(no_header)
    with pytest.raises(ValueError, match="no pairs"):
        (tmp_path / "header_only.csv").write_text("moving,fixed\n")
        read_pairs_csv(tmp_path / "header_only.csv")

    out = tmp_path / "run"
    assert main(["train", "--pairs", str(bad), "--out", str(out), "--preset", "test"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.csv line 3" in err[0], err
    assert not (out / "last.pt").exists()
    args = ["train", str(GLIOMA), "--pair", str(MS07), str(COLIN), "--out", str(out)]
    assert main([*args, "--preset", "test"]) == 2
    assert "not both" in capsys.readouterr().err


def test_cli_pair_run_resumes_from_its_checkpoint(tmp_path, capsys):
    _link_fixtures(tmp_path / "scans")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"moving,fixed\nscans/{GLIOMA.name},scans/{MS07.name}\n")
    out = tmp_path / "run"
    command = ["train", "--pairs", str(pairs), "--out", str(out), "--preset", "test"]
    assert main([*command, "--steps", "1"]) == 0
    first = load_checkpoint(out / "last.pt")
    assert first.step == 1 and first.provenance["task"] == "longitudinal"
    assert first.provenance["fixed"] and first.provenance["inputs"]

    assert main([*command, "--steps", "2"]) == 0  # the same command, a longer schedule
    second = load_checkpoint(out / "last.pt")
    assert second.step == 2 and second.provenance["resumed_from_step"] == 1
    assert second.provenance["task"] == "longitudinal"
    assert second.trainer["net_steps"]["reg"] == 1 and second.trainer["net_steps"]["seg"] == 1
    rows = [json.loads(r) for r in (out / "history.jsonl").read_text().splitlines()]
    assert [(r["step"], r["phase"]) for r in rows] == [(1, "reg"), (2, "seg")]
    # the reg weights were kept from step 1, the seg weights trained on in step 2
    for k, v in first.model["reg"].items():
        assert torch.equal(v, second.model["reg"][k]), k
    assert any(not torch.equal(v, second.model["seg"][k]) for k, v in first.model["seg"].items())

    # an atlas run cannot continue a longitudinal checkpoint (refused before any work)
    capsys.readouterr()
    code = main(["train", str(GLIOMA), "--out", str(out), "--preset", "test", "--steps", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "longitudinal run" in err[0], err
    assert load_checkpoint(out / "last.pt").step == 2
