"""Checkpoints that are hostile, damaged or do not fit: clear errors naming the file, nothing executed,
nothing deleted or overwritten; the v2 manifest, keep-K and failed saves; --resume last-good."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dtrain.nn.utils.serialization import save_npz
from dtrain.train import (
    CheckpointError,
    CheckpointManager,
    LocalCollectives,
    LocalGradientSync,
    load_checkpoint,
    save_checkpoint,
)
from dtrain.train import checkpoint as ckpt_module
from dtrain.train.config import resolve_config
from dtrain.train.job import build_job, model_defaults, run

# 23 steps per epoch on digits; float64 so runs compare bit for bit.
COMMON = dict(epochs=2, dtype="float64", hidden="16", optimizer="adam", lr=3e-3, scheduler="cosine", warmup_steps=5)


def config(**flags):
    flags.setdefault("progress", False)
    flags.setdefault("monitor", False)
    return resolve_config(flags, None, model_defaults)


def snapshot(folder) -> dict:
    """{name: bytes} of every file in ``folder``: proves nothing was written, renamed or deleted."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def write_manifest(folder, *names) -> None:
    """A valid version-2 manifest naming ``names`` (oldest first) with their true sizes and SHA-256."""
    entries = [{"file": n, "step": int(n[5:13]), "sha256": hashlib.sha256((folder / n).read_bytes()).hexdigest(),
                "bytes": (folder / n).stat().st_size} for n in names]
    (folder / "latest.json").write_text(json.dumps({"format": "dtrain-checkpoint-manifest", "version": 2,
                                                    "latest": names[-1], "checkpoints": entries}))


class _OpensAFile:
    """Unpickling this calls open(marker, "w"): proof that a loader ran code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def hostile(tmp_path):
    """A folder whose newest checkpoint (named by a valid manifest) holds a pickled object array."""
    folder = tmp_path / "ck"
    folder.mkdir()
    marker = tmp_path / "pwned"
    meta = json.dumps({"format": "dtrain-checkpoint", "format_version": 1}).encode()
    path = folder / "ckpt-00000010.npz"
    np.savez(path, **{"model/0.weight": np.array([_OpensAFile(marker)], dtype=object),
                      "__metadata__.json": np.frombuffer(meta, dtype=np.uint8)})
    write_manifest(folder, path.name)
    return folder, path, marker


def test_a_pickled_checkpoint_is_refused_without_running_code(hostile, tmp_path):
    folder, path, marker = hostile
    before = snapshot(folder)
    with pytest.raises(CheckpointError, match=f"{path}.*pickled"):
        load_checkpoint(str(path))
    manager = CheckpointManager(str(folder))
    assert manager.latest() == str(path)  # its checksum is right: only loading it reveals the problem
    with pytest.raises(CheckpointError, match=str(path)):
        build_job(config(checkpoint_dir=str(folder), resume="latest"))
    with pytest.raises(CheckpointError, match=str(path)):
        build_job(config(checkpoint_dir=str(folder), resume=str(path)))
    good, skipped = manager.last_good()
    assert good is None and [p for p, _ in skipped] == [str(path)] and "pickled" in skipped[0][1]
    with pytest.raises(CheckpointError, match="no checkpoint that verifies found in"):
        build_job(config(checkpoint_dir=str(folder), resume="last-good"))
    assert not marker.exists()
    assert snapshot(folder) == before
    # The premise: a loader that unpickles would have run the payload.
    with open(path, "rb") as f, np.load(f, allow_pickle=True) as z:
        z["model/0.weight"][0].close()
    assert marker.exists()


def test_a_pickled_checkpoint_through_the_cli_is_one_error_line(hostile):
    folder, path, marker = hostile
    before = snapshot(folder)
    res = subprocess.run([sys.executable, "-m", "dtrain", "train", "--checkpoint-dir", str(folder), "--resume",
                          str(path), "--epochs", "1", "--hidden", "8", "--no-progress", "--no-monitor"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and lines[0].startswith("dtrain train: error:"), res.stderr
    assert not marker.exists()
    assert snapshot(folder) == before


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """An uninterrupted run's summary, and the checkpoint folder of the same run stopped at step 30
    (checkpoints at steps 10, 20 and 30; step 30 is mid-way through epoch 2)."""
    full = run(config(**COMMON))
    folder = tmp_path_factory.mktemp("interrupted") / "ck"
    run(config(**COMMON, max_steps=30, checkpoint_dir=str(folder), checkpoint_every="10"))
    assert sorted(p.name for p in folder.glob("ckpt-*")) == [f"ckpt-000000{s}.npz" for s in (10, 20, 30)]
    return full, folder


def test_a_truncated_checkpoint_names_the_previous_good_one_and_last_good_resumes_exactly(interrupted, capsys):
    full, folder = interrupted
    newest, previous = folder / "ckpt-00000030.npz", folder / "ckpt-00000020.npz"
    size = newest.stat().st_size
    newest.write_bytes(newest.read_bytes()[:size // 2])
    before = snapshot(folder)
    with pytest.raises(CheckpointError) as err:
        CheckpointManager(str(folder)).latest()
    assert str(err.value) == (f"checkpoint {newest} is truncated ({size // 2} of {size} bytes); the previous good "
                              f"checkpoint is {previous}: resume from it with --resume last-good (or --resume PATH)")
    with pytest.raises(CheckpointError, match=str(newest)):
        build_job(config(**COMMON, checkpoint_dir=str(folder), resume="latest"))
    with pytest.raises(CheckpointError, match=f"checkpoint {newest} is not a dtrain checkpoint \\(or is damaged\\)"):
        build_job(config(**COMMON, resume=str(newest)))
    assert snapshot(folder) == before  # failed resumes read only
    capsys.readouterr()

    resumed = run(config(**COMMON, checkpoint_dir=str(folder), resume="last-good"))
    err = capsys.readouterr().err
    assert f"--resume last-good: skipping {newest}: is truncated ({size // 2} of {size} bytes)" in err
    assert resumed["steps"] == full["steps"] == 46
    assert resumed["param_checksum"] == full["param_checksum"]


def test_checksum_mismatch_and_missing_file_are_named(tmp_path):
    folder = tmp_path / "ck"
    run(config(epochs=1, max_steps=4, hidden="8", checkpoint_dir=str(folder), checkpoint_every="2"))
    newest, previous = folder / "ckpt-00000004.npz", folder / "ckpt-00000002.npz"
    data = bytearray(newest.read_bytes())
    data[200] ^= 0xFF  # same size, one flipped byte
    newest.write_bytes(bytes(data))
    manager = CheckpointManager(str(folder))
    with pytest.raises(CheckpointError, match=f"checkpoint {newest} is corrupt \\(checksum mismatch\\).*previous "
                                              f"good checkpoint is {previous}: resume from it with --resume last-good"):
        manager.latest()
    newest.unlink()
    with pytest.raises(CheckpointError, match=f"checkpoint {newest} is missing.*good checkpoint is {previous}"):
        manager.latest()
    assert manager.last_good()[0] == str(previous)


@pytest.mark.parametrize("saved, resumed, expect", [
    (dict(hidden="32"), dict(hidden="64"), r"0\.weight: expected shape \(64, 64\), got \(32, 64\)"),
    (dict(model="cnn"), dict(model="mlp"), r"(missing|unexpected) keys: .*\d\.(weight|bias)"),
], ids=["mlp-32-into-mlp-64", "cnn-into-mlp"])
def test_a_checkpoint_of_another_model_names_the_file_and_the_mismatch(tmp_path, saved, resumed, expect):
    folder = tmp_path / "ck"
    run(config(epochs=1, max_steps=1, checkpoint_dir=str(folder), **saved))
    path = CheckpointManager(str(folder)).latest()
    before = snapshot(folder)
    for resume in ("latest", path):
        with pytest.raises(CheckpointError, match=f"checkpoint {path} does not fit this run: .*{expect}"):
            build_job(config(epochs=1, checkpoint_dir=str(folder), resume=resume, **resumed))
    assert snapshot(folder) == before


def test_files_that_are_not_dtrain_checkpoints(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(CheckpointError, match=f"checkpoint {garbage} is not a dtrain checkpoint"):
        load_checkpoint(str(garbage))
    foreign = tmp_path / "foreign.npz"
    save_npz({"w": np.zeros(3)}, str(foreign), metadata={"format": "some-other-tool", "format_version": 1})
    with pytest.raises(CheckpointError, match=f"{foreign} is not a dtrain checkpoint \\(format tag 'some-other-tool'"):
        load_checkpoint(str(foreign))
    plain = tmp_path / "plain.npz"
    np.savez(plain, w=np.zeros(3))
    with pytest.raises(CheckpointError, match=f"{plain} is not a dtrain checkpoint \\(format tag None"):
        load_checkpoint(str(plain))
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path / 'absent.npz'} does not exist"):
        load_checkpoint(str(tmp_path / "absent.npz"))


# -- the manager: manifest v2, keep-K, failed saves ------------------------------------------------

@pytest.fixture
def small_trainer(tmp_path):
    return build_job(config(epochs=1, hidden="8", checkpoint_dir=str(tmp_path / "ck"), keep_checkpoints=2))


def _save_at(trainer, step: int) -> str:
    trainer.state.step = step
    return trainer.checkpoints.manager.save(trainer.state_dict())


def test_the_manifest_lists_every_kept_checkpoint_with_its_checksum(small_trainer, tmp_path):
    folder = tmp_path / "ck"
    for step in (3, 6, 9, 12):
        _save_at(small_trainer, step)
    names = ["ckpt-00000009.npz", "ckpt-00000012.npz"]
    assert sorted(p.name for p in folder.iterdir()) == [*names, "latest.json"]  # keep=2, no temporary files
    manifest = json.loads((folder / "latest.json").read_text())
    assert manifest["format"] == "dtrain-checkpoint-manifest" and manifest["version"] == 2
    assert manifest["latest"] == names[-1]
    assert manifest["checkpoints"] == [
        {"file": n, "step": int(n[5:13]), "sha256": hashlib.sha256((folder / n).read_bytes()).hexdigest(),
         "bytes": (folder / n).stat().st_size} for n in names]
    meta = load_checkpoint(str(folder / names[-1]))
    assert meta["world_size"] == 1 and meta["trainer"]["step"] == 12
    assert CheckpointManager(str(folder)).last_good() == (str(folder / names[-1]), [])


def test_a_version_1_manifest_is_still_read_and_upgraded(small_trainer, tmp_path):
    folder = tmp_path / "ck"
    for step in (3, 6):
        _save_at(small_trainer, step)
    newest = folder / "ckpt-00000006.npz"
    digest = hashlib.sha256(newest.read_bytes()).hexdigest()
    (folder / "latest.json").write_text(json.dumps({"latest": newest.name, "step": 6, "sha256": digest}))
    manager = CheckpointManager(str(folder))
    assert manager.latest() == str(newest)
    _save_at(small_trainer, 9)
    manifest = json.loads((folder / "latest.json").read_text())
    assert manifest["version"] == 2 and [e["file"] for e in manifest["checkpoints"]] == [newest.name,
                                                                                         "ckpt-00000009.npz"]
    assert manifest["checkpoints"][0]["sha256"] == digest


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _write_half_then_enospc(fp, array, **kwargs):
    fp.write(b"\0" * 100)
    _enospc()


@pytest.mark.parametrize("fail", ["fsync", "write", "manifest"])
def test_a_failed_save_leaves_the_previous_checkpoints_and_manifest_intact(small_trainer, tmp_path, monkeypatch,
                                                                          fail):
    folder = tmp_path / "ck"
    _save_at(small_trainer, 3)
    _save_at(small_trainer, 6)
    before = snapshot(folder)
    if fail == "fsync":
        monkeypatch.setattr(os, "fsync", _enospc)
    elif fail == "write":
        monkeypatch.setattr(np.lib.format, "write_array", _write_half_then_enospc)
    else:
        real = ckpt_module._atomic_write
        monkeypatch.setattr(ckpt_module, "_atomic_write",
                            lambda path, write: _enospc() if path.endswith("latest.json") else real(path, write))
    failed = folder / ("ckpt-00000009.npz" if fail != "manifest" else "latest.json")
    with pytest.raises(CheckpointError, match=f"{failed}: No space left on device"):
        _save_at(small_trainer, 9)
    monkeypatch.undo()
    assert snapshot(folder) == before  # no temporary file, nothing half-written, nothing deleted
    assert CheckpointManager(str(folder)).latest() == str(folder / "ckpt-00000006.npz")


def test_the_epoch_sums_of_all_ranks_go_to_rank_0(small_trainer, tmp_path, capsys):
    """Saved by 2 ranks with their summed epoch sums; restored on 3 ranks: rank 0 holds the sums, the others
    zeros; RNG state r goes to rank r (< 2); compressor memories cannot be split over 3 ranks: dropped."""
    trainer = small_trainer
    trainer.state.step, trainer.state.batch = 7, 7
    trainer.sync, trainer.collectives = _FakeSync(compression="topk:0.1"), _FakeCollectives(rank=0, world_size=2)
    rng = [{"seed": 11, "cpu": np.random.default_rng(11).bit_generator.state},
           {"seed": 12, "cpu": np.random.default_rng(12).bit_generator.state}]
    memory = [{"step": 7, "compressor": {"spec": "topk:0.1", "memory/b0": np.full(3, float(r))}} for r in range(2)]
    path = str(tmp_path / "two-ranks.npz")
    save_checkpoint(path, trainer.state_dict(rng_states=rng, compression_states=memory, epoch_sums=(12.5, 30.0, 40)))
    assert load_checkpoint(path)["world_size"] == 2

    from dtrain import backend

    for rank, world in ((0, 2), (1, 2), (0, 3), (1, 3), (2, 3)):
        sync = _FakeSync(compression="topk:0.1")
        trainer.sync, trainer.collectives = sync, _FakeCollectives(rank=rank, world_size=world)
        backend.default_generator.manual_seed(99)
        capsys.readouterr()
        trainer.load_checkpoint(path)
        st = trainer.state
        assert (st.loss_sum, st.correct, st.seen) == ((12.5, 30.0, 40) if rank == 0 else (0.0, 0.0, 0))
        assert st.step == 7 and st.batch == 7
        assert backend.default_generator.get_state()["seed"] == (11 + rank if rank < 2 else 99)
        warned = "compression restarts with empty memories" in capsys.readouterr().err
        if world == 2:  # the same world: each rank gets its own memory back
            assert sync.loaded[0]["compressor"]["memory/b0"].tolist() == [float(rank)] * 3 and not warned
        else:
            assert sync.loaded == [] and warned == (rank == 0)


class _FakeSync(LocalGradientSync):
    def __init__(self, compression: str):
        super().__init__()
        self.compression = compression
        self.loaded = []

    def load_compressor_state(self, state: dict) -> None:
        self.loaded.append(state)


class _FakeCollectives(LocalCollectives):
    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size
