"""Regression tests of the hostile-input pass (issue 11): each bad input ends with a one-line
reason (exit code 2 from the CLI) instead of a traceback, a silent wrong result or a leak."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_girnet import cli
from napari_girnet.cli import main
from napari_girnet.core import checkpoint as ckpt_mod
from napari_girnet.core.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from napari_girnet.core.colearn import TrainingReport
from napari_girnet.core.config import preset
from napari_girnet.core.model import GIRNet
from napari_girnet.data.nifti import read_nifti
from napari_girnet.data.volume import (
    Volume,
    VolumeError,
    check_brain_size,
    describe_grid_mismatch,
)

DATA = Path(__file__).resolve().parents[1] / "data"
GLIOMA = DATA / "glioma_t1_3mm.nii.gz"
GLIOMA_MASK = DATA / "glioma_tumor_3mm.nii.gz"


def _one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return lines[0]


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    cfg = preset("test")
    model = GIRNet(cfg)
    state = {tag: net.state_dict() for tag, net in model.networks.items()}
    return save_checkpoint(
        Checkpoint(config=cfg, model=state), tmp_path_factory.mktemp("ckpt") / "good.pt"
    )


def _payload(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_checkpoint_with_non_finite_weights_is_refused(good_checkpoint, tmp_path, bad):
    payload = _payload(good_checkpoint)
    name = next(k for k, t in payload["model"]["seg"].items() if t.is_floating_point())
    payload["model"]["seg"][name].view(-1)[3] = bad
    path = tmp_path / "diverged.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = _one_line(str(info.value))
    assert str(path) in msg and f"seg.{name}" in msg and "1 NaN or infinite" in msg
    assert isinstance(load_checkpoint(good_checkpoint), Checkpoint)


def test_oversized_checkpoint_is_refused_before_loading(good_checkpoint, tmp_path, monkeypatch):
    payload = _payload(good_checkpoint)
    payload["padding"] = torch.zeros(300_000)  # 1.2 MB of extra tensor data
    path = tmp_path / "padded.pt"
    torch.save(payload, path)
    limit = good_checkpoint.stat().st_size + 2**20
    monkeypatch.setattr(ckpt_mod, "MAX_CHECKPOINT_BYTES", limit)
    loads = []
    monkeypatch.setattr(ckpt_mod.torch, "load", lambda *a, **k: loads.append(a))
    with pytest.raises(CheckpointError, match=r"padded\.pt: file is .* MiB, more than any"):
        load_checkpoint(path)
    assert loads == []  # refused before any unpickling


def test_foreign_files_are_not_a_checkpoint_in_one_short_line(good_checkpoint, tmp_path):
    rand = tmp_path / "random.pt"
    rand.write_bytes(np.random.default_rng(0).bytes(4000))
    nifti = tmp_path / "scan.nii.gz"
    nifti.write_bytes(GLIOMA.read_bytes())

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "napari-girnet-checkpoint", "x": Exploit()}, evil)
    for path in (rand, nifti, evil):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        msg = _one_line(str(info.value))
        assert msg.startswith(f"{path}: ") and "not a napari-girnet checkpoint" in msg
        assert len(msg) < 200 and "weights_only" not in msg and "malicious" not in msg


@pytest.mark.parametrize("version", ["1x", None, 2.5, [1]])
def test_bad_format_version_names_the_file(good_checkpoint, tmp_path, version):
    payload = _payload(good_checkpoint)
    payload["format_version"] = version
    path = tmp_path / "badver.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"badver\.pt: invalid checkpoint format_version"):
        load_checkpoint(path)


def test_stale_temporaries_of_killed_saves_are_removed(good_checkpoint, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old = time.time() - 2 * ckpt_mod.STALE_TMP_SECONDS
    recent = time.time() - 2 * ckpt_mod.DEAD_WRITER_TMP_SECONDS
    files = {
        f".last.pt.{dead.pid}-0123abcd.tmp": (recent, True),  # writer gone
        ".last.pt.k2_9xq1z.tmp": (old, True),  # tempfile name of an older version, old
        f".last.pt.{os.getpid()}-0123abcd.tmp": (recent, False),  # writer alive (us)
        ".last.pt.k2_9xq1y.tmp": (time.time(), False),  # could still be in progress
        f".last.pt.{dead.pid}-0123abce.tmp": (time.time(), False),  # too recent
        ".notes.txt.0123abcd.tmp": (old, False),  # not a checkpoint temporary
        f".scan.nii.gz.{dead.pid}-0123abcd.tmp": (old, False),  # a NIfTI writer's
        "last.pt.tmp": (old, False),
    }
    for name, (mtime, _) in files.items():
        (tmp_path / name).write_bytes(b"partial")
        os.utime(tmp_path / name, (mtime, mtime))
    cfg = preset("test")
    ckpt = load_checkpoint(good_checkpoint)
    save_checkpoint(Checkpoint(config=cfg, model=ckpt.model), tmp_path / "last.pt")
    for name, (_, stale) in files.items():
        assert (tmp_path / name).exists() != stale, name
    # loading cleans the folder too; nothing else is touched
    os.utime(tmp_path / ".last.pt.k2_9xq1y.tmp", (old, old))
    load_checkpoint(tmp_path / "last.pt")
    assert not (tmp_path / ".last.pt.k2_9xq1y.tmp").exists()
    assert remove_stale_temporaries(tmp_path / "missing-folder") == []


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_checkpoint_permissions_follow_the_umask(good_checkpoint, tmp_path, umask):
    ckpt = load_checkpoint(good_checkpoint)
    previous = os.umask(umask)
    try:
        path = save_checkpoint(ckpt, tmp_path / "last.pt")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# ----------------------------------------------------------------------------- volumes
@pytest.mark.parametrize(
    "array",
    [
        np.ones((4, 4, 4), np.complex64),
        np.ones((4, 4, 4), object),
        np.full((4, 4, 4), "a"),
        np.zeros((4, 4, 4), dtype=[("a", "f4"), ("b", "f4")]),
    ],
)
def test_volume_refuses_non_real_arrays(array):
    with pytest.raises(VolumeError, match=r"^img: unsupported voxel type"):
        Volume(array, np.eye(4), name="img")


def test_brain_size_check():
    check_brain_size(read_nifti(GLIOMA))
    rng = np.random.default_rng(0)
    with pytest.raises(VolumeError, match=r"^tiny: 8x8x8 voxels is too small"):
        check_brain_size(Volume(rng.random((8, 8, 8)), np.eye(4), name="tiny"))
    big_fov = np.zeros((64, 64, 64), np.float32)
    big_fov[10:20, 10:50, 10:50] = 1.0  # content spans 10 voxels along axis 0
    with pytest.raises(VolumeError, match=r"axis 0 10 mm"):
        check_brain_size(Volume(big_fov, np.eye(4), name="blob"))
    check_brain_size(Volume(big_fov, np.diag([6.0, 2.0, 2.0, 1.0]), name="coarse"))
    with pytest.raises(VolumeError, match="constant"):
        check_brain_size(Volume(np.ones((32, 32, 32)), np.diag([3.0, 3, 3, 1]), name="flat"))


def test_grid_mismatch_is_described():
    scan = read_nifti(GLIOMA)
    assert describe_grid_mismatch(read_nifti(GLIOMA_MASK), scan) is None
    shifted = scan.affine.copy()
    shifted[:3, 3] += [3.0, 0.0, -1.5]
    msg = describe_grid_mismatch(Volume(scan.array, shifted, name="truth"), scan)
    assert msg == f"truth: grid does not match {scan.name}: origin shifted by (3, 0, -1.5) mm"
    zoomed = scan.affine @ np.diag([2.0, 1.0, 1.0, 1.0])
    msg = describe_grid_mismatch(Volume(scan.array[::2], zoomed, name="t"), scan)
    assert (
        "shape (40, 80, 52) vs (80, 80, 52)" in msg and "voxel size (6, 3, 3) vs (3, 3, 3)" in msg
    )
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    rot = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    msg = describe_grid_mismatch(Volume(scan.array, rot @ scan.affine, name="t"), scan)
    assert "axes rotated by 10 deg" in msg


# ----------------------------------------------------------------------------- CLI
@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--threads", "-1"], "--threads"),
        (["--threads", "0"], "--threads"),
        (["--min-lesion-ml", "nan"], "--min-lesion-ml"),
        (["--min-lesion-ml", "inf"], "--min-lesion-ml"),
        (["--min-lesion-ml", "-0.5"], "--min-lesion-ml"),
        (["--instance-steps", "-1"], "--instance-steps"),
        (["--pseudo-cases", "-2"], "--pseudo-cases"),
        (["--steps", "-1"], "--steps"),
        (["--steps", "1.5"], "--steps"),
        (["--seed", "-1"], "--seed"),
        (["--seed", str(2**40)], "--seed"),
    ],
)
def test_cli_numeric_flags_are_validated(tmp_path, capsys, flags, needle):
    out = tmp_path / "out"
    assert main(["register", str(GLIOMA), "--out", str(out), "--preset", "test", *flags]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("girnet register: error: argument " + needle)
    assert not out.exists()


def test_cli_numeric_flags_of_train_and_make_cases(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "t"), "--threads", "-1"]) == 2
    assert "--threads" in _one_line(capsys.readouterr().err)
    assert main(["make-cases", "--out", str(tmp_path / "m"), "--n", "0"]) == 2
    assert "--n" in _one_line(capsys.readouterr().err)


def test_cli_out_is_checked_before_any_work(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    calls = []
    monkeypatch.setattr(cli, "_cmd_register", lambda args: calls.append(args) or 0)
    for out, needle in ((afile, "exists and is not a folder"), (afile / "sub", "is not a folder")):
        assert main(["register", str(GLIOMA), "--out", str(out), "--preset", "test"]) == 2
        line = _one_line(capsys.readouterr().err)
        assert str(out) in line and needle in line
    assert main(["evaluate", "--out", str(tmp_path)]) == 2
    assert "is a folder" in _one_line(capsys.readouterr().err)
    assert calls == []


def test_cli_refuses_a_tiny_volume_and_a_shifted_truth(tmp_path, capsys):
    tiny = tmp_path / "tiny.nii.gz"
    img = nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 8)).astype(np.float32), None)
    img.header.set_xyzt_units("mm")
    nib.save(img, tiny)
    assert main(["register", str(tiny), "--out", str(tmp_path / "a"), "--preset", "test"]) == 2
    assert "too small to hold a brain" in _one_line(capsys.readouterr().err)
    src = nib.load(GLIOMA_MASK)
    affine = src.affine.copy()
    affine[0, 3] += 3.0
    truth = tmp_path / "truth.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj), affine, src.header), truth)
    args = ["register", str(GLIOMA), "--out", str(tmp_path / "b"), "--preset", "test"]
    assert main([*args, "--truth", str(truth)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "truth.nii.gz: grid does not match" in line and "origin shifted by (3, 0, 0) mm" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_model_that_is_not_a_checkpoint(tmp_path, capsys):
    args = ["register", str(GLIOMA), "--out", str(tmp_path / "o"), "--preset", "test"]
    assert main([*args, "--model", str(GLIOMA)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert (
        line == f"girnet: error: {GLIOMA}: not a napari-girnet checkpoint (this is a NIfTI image)"
    )


def test_cli_warnings_go_to_the_debug_log(tmp_path, capsys, monkeypatch):
    def noisy(args):
        import warnings

        warnings.warn("a library warning", UserWarning, stacklevel=1)
        raise ValueError("x.nii.gz: the reason")

    monkeypatch.setattr(cli, "_cmd_evaluate", noisy)
    assert main(["evaluate", "--out", str(tmp_path / "e.json")]) == 2
    assert _one_line(capsys.readouterr().err) == "girnet: error: x.nii.gz: the reason"


class _FakeLearner:
    total_steps = 6
    step = 0


class _FakeSession:
    """Yields training reports like FitSession; checkpoint every 2 steps; stoppable."""

    def __init__(self, out: Path, interrupt_at: int | None) -> None:
        self.learner = _FakeLearner()
        self.out, self.interrupt_at, self.stop = out, interrupt_at, False
        self.seen_rows: list[int] = []

    def request_stop(self) -> None:
        self.stop = True

    def __iter__(self):
        for step in range(1, 7):
            if self.stop:
                yield TrainingReport(step - 1, 6, "stopped", float("nan"), checkpoint=self.out)
                return
            yield TrainingReport(
                step, 6, "reg", 1.0 / step, checkpoint=self.out if step % 2 == 0 else None
            )
            # the row of the step just reported is on disk, not in a buffer
            self.seen_rows.append(len((self.out / "history.jsonl").read_text().splitlines()))
            if step == self.interrupt_at:
                os.kill(os.getpid(), signal.SIGINT)
        yield TrainingReport(6, 6, "finished", float("nan"), checkpoint=self.out)


@pytest.mark.parametrize("interrupt_at, code, rows", [(None, 0, 6), (3, 130, 3)])
def test_cli_train_flushes_history_and_exits_130_on_ctrl_c(
    tmp_path, capsys, monkeypatch, interrupt_at, code, rows
):
    from napari_girnet import api

    sessions = []

    def fake_fit(*args, **kwargs):
        sessions.append(_FakeSession(Path(kwargs["checkpoint_dir"]), interrupt_at))
        return sessions[-1]

    monkeypatch.setattr(api, "fit", fake_fit)
    assert main(["train", "--out", str(tmp_path), "--preset", "test"]) == code
    history = [json.loads(r) for r in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == list(range(1, rows + 1))
    assert sessions[0].seen_rows == list(range(1, rows + 1))
    err = capsys.readouterr().err
    assert ("girnet: interrupted" in err) == (code == 130)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
