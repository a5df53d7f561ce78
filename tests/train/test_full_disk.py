"""Outputs on a disk that is full, read-only or too small (issue 17, items 3 and 5), on real file systems:
small tmpfs mounts, so these need root (CI runs as root; elsewhere they skip, saying why).

The policy, the same for every output: a folder that cannot take the run's files is an error at the start;
a periodic write that fails (a checkpoint, a metrics record) is a warning and training goes on; a final write
that fails (the last checkpoint, summary.json) is an error on every rank (exit 2) naming the file, after
writing what can be written elsewhere. Every output file is written whole or not at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dtrain.files import OutputError, check_writable_dir, write_atomic

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--epochs", "1", "--max-steps", "6", "--batch-size", "8", "--no-progress", "--no-monitor",
         "--dataset", "synthetic:n=64,features=4,classes=3"]


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a disk that fills up) needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(folder: Path) -> None:
    """Fill the file system of ``folder`` to the last block."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for chunk in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)


def _train(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "dtrain", "train", *SMALL, *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_a_checkpoint_folder_too_small_is_an_error_before_training(tmp_path):
    with _tmpfs(tmp_path / "small", "256k") as small:
        res = _train("--hidden", "512", "--out", str(tmp_path / "out"), "--checkpoint-dir", str(small / "ck"))
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"dtrain train: error: --checkpoint-dir {small}/ck has 256.0 KiB free, less than "
                           "the "), last
    assert "epoch" not in res.stdout + res.stderr  # nothing trained


def test_an_unwritable_checkpoint_folder_is_an_error_before_training(tmp_path):
    # /proc takes no new folders, even from root (a read-only mount behaves alike)
    res = _train("--out", str(tmp_path / "out"), "--checkpoint-dir", "/proc/dtrain-ck")
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1] == ("dtrain train: error: --checkpoint-dir /proc/dtrain-ck cannot be "
                                                   "created: No such file or directory")


def test_a_checkpoint_disk_that_fills_up_warns_then_the_final_checkpoint_goes_under_out(tmp_path):
    out = tmp_path / "out"
    with _tmpfs(tmp_path / "disk", "3m") as disk:
        res = _train("--hidden", "16384", "--out", str(out), "--checkpoint-dir", str(disk / "ck"),
                     "--checkpoint-every", "1", "--keep-checkpoints", "5")
        kept = sorted(p.name for p in (disk / "ck").iterdir())
    assert res.returncode == 2, res.stderr
    assert "not written: cannot write checkpoint" in res.stderr and "No space left on device" in res.stderr
    assert "training continues" in res.stderr
    fallback = out / "checkpoints" / "ckpt-00000006.npz"
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"dtrain train: error: the final checkpoint could not be written to {disk}/ck: "), last
    assert last.endswith(f"it was written to {fallback} instead (--resume {fallback})"), last
    assert fallback.is_file()
    summary = json.loads((out / "summary.json").read_text())  # the run's results are not lost either
    assert summary["steps"] == 6
    assert not [n for n in kept if ".tmp" in n], kept  # no partial file left behind


def test_a_full_out_at_the_end_is_an_error_naming_summary_json_and_leaves_no_partial_file(tmp_path, monkeypatch,
                                                                                          capsys):
    from dtrain import cli
    from dtrain.train.reporting import Reporter

    finish = Reporter.finish

    def fill_then_finish(self, *args, **kwargs):  # the disk fills up while the run ends
        _fill(Path(self.out_dir))
        return finish(self, *args, **kwargs)

    monkeypatch.setattr(Reporter, "finish", fill_then_finish)
    with _tmpfs(tmp_path / "out", "2m") as out:
        status = cli.main(["train", *SMALL, "--hidden", "8", "--out", str(out)])
        names = sorted(os.listdir(out))
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.strip().splitlines()[-1] == (f"dtrain train: error: cannot write {out}/summary.json: No space left "
                                            "on device")
    assert "summary.json" not in names and not [n for n in names if ".tmp" in n], names
    assert "metrics.jsonl" in names


def test_write_atomic_on_a_full_disk_keeps_the_old_file_whole(tmp_path):
    with _tmpfs(tmp_path / "disk", "64k") as disk:
        target = disk / "summary.json"
        write_atomic(str(target), '{"old": true}')
        _fill(disk)
        with pytest.raises(OutputError, match=rf"^cannot write {target}: No space left on device$") as info:
            write_atomic(str(target), "x" * 100_000)
        assert info.value.errno == 28
        assert target.read_text() == '{"old": true}'
        assert sorted(os.listdir(disk)) == ["filler", "summary.json"]
        with pytest.raises(OutputError, match=rf"^--out {disk} is not writable: No space left on device$"):
            check_writable_dir(str(disk), "--out", 1 << 20)
