"""Checkpoint files as hostile input (issue 17, items 6, 7 and 8): JSON nested past the parser's limit in
latest.json or in a checkpoint's metadata, crafted trainer/RNG fields, FIFOs and devices where a file is
expected, files larger than their format. Each is one CheckpointError (so `dtrain train` exits 2 with one
line) naming the file and the field and value; `--resume last-good` skips a bad checkpoint or manifest;
nothing blocks, nothing reads without bound."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from contextlib import redirect_stderr

import numpy as np
import pytest

from dtrain.cli import main
from dtrain.nn.utils.serialization import load_npz, save_npz
from dtrain.train import CheckpointError, CheckpointManager, load_checkpoint
from dtrain.train import checkpoint as ckpt_module
from dtrain.train.config import resolve_config
from dtrain.train.job import build_job, model_defaults

DATA = "synthetic:n=64,features=4,classes=3"  # 52 train samples: 7 batches of 8 per epoch
RUN = dict(epochs=1, batch_size=8, hidden="8", dataset=DATA)
CLI = ["train", "--epochs", "1", "--max-steps", "3", "--batch-size", "8", "--hidden", "8", "--no-progress",
       "--no-monitor", "--dataset", DATA]


def config(**flags):
    flags.setdefault("progress", False)
    flags.setdefault("monitor", False)
    return resolve_config({**RUN, **flags}, None, model_defaults)




@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A folder with checkpoints after steps 1, 2 and 3 (of epoch 1) and their manifest."""
    from dtrain.train.job import run

    folder = tmp_path_factory.mktemp("made") / "ck"
    run(config(max_steps=3, checkpoint_dir=str(folder), checkpoint_every="1"))
    assert sorted(os.listdir(folder)) == ["ckpt-00000001.npz", "ckpt-00000002.npz", "ckpt-00000003.npz",
                                          "latest.json"]
    return folder


@pytest.fixture
def ck(made, tmp_path):
    """A private copy of the made folder."""
    folder = tmp_path / "ck"
    shutil.copytree(made, folder)
    return folder


def write_manifest(folder) -> None:
    """A valid version-2 manifest of every ckpt-*.npz in ``folder`` (their true sizes and SHA-256)."""
    names = sorted(n for n in os.listdir(folder) if n.startswith("ckpt-"))
    entries = [{"file": n, "step": int(n[5:13]), "sha256": hashlib.sha256((folder / n).read_bytes()).hexdigest(),
                "bytes": (folder / n).stat().st_size} for n in names]
    (folder / "latest.json").write_text(json.dumps({"format": "dtrain-checkpoint-manifest", "version": 2,
                                                    "latest": names[-1], "checkpoints": entries}))


def rewrite(src, dst, edit=None, raw_metadata: bytes | None = None) -> str:
    """``src`` copied to ``dst`` with ``edit(metadata, arrays)`` applied (or the metadata bytes replaced)."""
    arrays, meta = load_npz(str(src), with_metadata=True)
    if raw_metadata is not None:
        arrays["__metadata__.json"] = np.frombuffer(raw_metadata, dtype=np.uint8)
        np.savez(str(dst), **arrays)
        return str(dst)
    edit(meta, arrays)
    save_npz(arrays, str(dst), metadata=meta)
    return str(dst)


def cli_error(*args) -> str:
    """Run `dtrain train ARGS`; assert exit status 2 and one stderr line; return that line."""
    err = io.StringIO()
    with redirect_stderr(err):
        status = main([*CLI, *args])
    lines = [line for line in err.getvalue().splitlines() if not line.startswith("BLAS threads:")]
    assert status == 2 and len(lines) == 1, err.getvalue()
    assert lines[0].startswith("dtrain train: error: "), lines
    return lines[0]


# -- item 6: nesting past the parser's limit -----------------------------------------------------------

def test_a_deeply_nested_manifest_is_one_error_and_last_good_skips_it(ck, tmp_path):
    manifest = ck / "latest.json"
    manifest.write_text("[" * 200_000)
    with pytest.raises(CheckpointError, match=rf"^checkpoint manifest {re.escape(str(manifest))}: nested too "
                                              r"deeply to parse; the newest good checkpoint is .*ckpt-00000003"):
        CheckpointManager(str(ck)).latest()
    good, skipped = CheckpointManager(str(ck)).last_good()
    assert good == str(ck / "ckpt-00000003.npz")
    assert skipped[0][0] == str(manifest) and "nested too deeply to parse" in skipped[0][1]
    line = cli_error("--out", str(tmp_path / "out"), "--checkpoint-dir", str(ck), "--resume")
    assert f"checkpoint manifest {manifest}: nested too deeply to parse" in line


def test_deeply_nested_checkpoint_metadata_is_skipped_by_last_good(ck):
    newest = ck / "ckpt-00000004.npz"
    rewrite(ck / "ckpt-00000003.npz", newest, raw_metadata=b"[" * 200_000)
    write_manifest(ck)
    with pytest.raises(CheckpointError, match=rf"^checkpoint {re.escape(str(newest))} is not a dtrain checkpoint "
                                              r"\(or is damaged\): the metadata entry is nested too deeply to parse$"):
        load_checkpoint(str(newest))
    trainer = build_job(config(checkpoint_dir=str(ck), resume="last-good"))
    assert trainer.state.step == 3  # resumed from the older, good one


def test_metadata_nested_below_the_parser_limit_is_refused_by_depth(ck):
    def nest(meta, arrays):
        x = 0
        for _ in range(900):  # parses; would overflow the recursion of anything that walks it afterwards
            x = [x]
        meta["config"]["hidden"] = x

    path = rewrite(ck / "ckpt-00000003.npz", ck / "deep.npz", nest)
    with pytest.raises(CheckpointError, match=rf"^checkpoint {re.escape(path)}: its metadata nests more than 32 "
                                              "levels deep"):
        load_checkpoint(path)


def test_last_good_says_so_when_no_checkpoint_verifies(ck):
    for name in ("ckpt-00000001.npz", "ckpt-00000002.npz", "ckpt-00000003.npz"):
        rewrite(ck / name, ck / name, raw_metadata=b"{" * 200_000)
    write_manifest(ck)
    with pytest.raises(CheckpointError, match=rf"^--resume last-good: no checkpoint that verifies found in "
                                              rf"{re.escape(str(ck))}$"):
        build_job(config(checkpoint_dir=str(ck), resume="last-good"))


# -- item 7: crafted trainer-state fields ----------------------------------------------------------------

def _set(section: str, key: str, value):
    def edit(meta, arrays):
        meta[section][key] = value
    return edit


@pytest.mark.parametrize("key, value, message", [
    ("step", "abc", r"trainer\.step must be a non-negative integer, got 'abc'"),
    ("step", 1.5, r"trainer\.step must be a non-negative integer, got 1\.5"),
    ("step", 3.0, r"trainer\.step must be a non-negative integer, got 3\.0"),
    ("step", True, r"trainer\.step must be a non-negative integer, got True"),
    ("step", -1, r"trainer\.step must be a non-negative integer, got -1"),
    ("step", 2**70, r"trainer\.step must be a non-negative integer below 2\*\*63, got 1180591620717411303424"),
    ("epoch", 10**9, r"trainer\.epoch 1000000000 and trainer\.batch 3 do not fit trainer\.step 3: every epoch "
                     r"takes at least one step"),
    ("batch", None, r"trainer\.batch must be a non-negative integer, got None"),
    ("seen", "8", r"trainer\.seen must be a non-negative integer, got '8'"),
    ("loss_sum", None, r"trainer\.loss_sum must be a number, got None"),
    ("correct", -1.0, r"trainer\.correct must be a non-negative number, got -1\.0"),
    ("train_time", "1s", r"trainer\.train_time must be a non-negative number, got '1s'"),
    ("best", [1.0], r"trainer\.best must be a number or null, got \[1\.0\]"),
    ("stopped_early", 1, r"trainer\.stopped_early must be true or false, got 1"),
    ("skipped_steps", 99, r"trainer\.skipped_steps is 99, more than trainer\.step 3"),
    ("step_at_epoch_start", 4, r"trainer\.step_at_epoch_start is 4, more than trainer\.step 3"),
    ("loss_scale", {"scale": 0.0, "good_steps": 0}, r"trainer\.loss_scale\.scale must be a positive finite number, "
                                                    r"got 0\.0"),
    ("loss_scale", {"scale": 2.0, "good_steps": "x"}, r"trainer\.loss_scale\.good_steps must be a non-negative "
                                                      r"integer, got 'x'"),
    ("history", "abc", r"trainer\.history must be a list of metrics records, got 'abc'"),
    ("history", [{"epoch": "x"}], r"trainer\.history\[0\]\.epoch must be a non-negative integer, got 'x'"),
    ("history", [{"test_loss": "low"}], r"trainer\.history\[0\]\.test_loss must be a number or null, got 'low'"),
    ("grad_flow", [[1]], r"trainer\.grad_flow\[0\] must be a \{layer: gradient norm\} object, got \[1\]"),
    ("extra", 1, r"the trainer state has unknown field\(s\) \['extra'\]"),
])
def test_crafted_trainer_fields_name_the_file_the_field_and_the_value(ck, key, value, message):
    path = rewrite(ck / "ckpt-00000003.npz", ck / "crafted.npz", _set("trainer", key, value))
    pattern = rf"^checkpoint {re.escape(path)}: {message}"
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(path)  # so --resume last-good skips such a file
    state = load_npz(path, with_metadata=True)[1]
    trainer = build_job(config(max_steps=3))
    with pytest.raises(CheckpointError, match=pattern):  # the Python API checks the same fields
        trainer.load_state_dict({**state, "model": trainer.model.state_dict()}, source=f"checkpoint {path}")


@pytest.mark.parametrize("edit, message", [
    (_set("trainer", "step", "abc"), r"trainer\.step must be a non-negative integer, got 'abc'"),  # was a traceback
    (_set("trainer", "epoch", 10**9), r"trainer\.epoch 1000000000 and trainer\.batch 3 do not fit"),  # was exit 0
], ids=["step-abc", "epoch-1e9"])
def test_crafted_fields_through_the_cli_are_one_error_line(ck, tmp_path, edit, message):
    path = rewrite(ck / "ckpt-00000003.npz", ck / "crafted.npz", edit)
    line = cli_error("--out", str(tmp_path / "out"), "--resume", path)
    assert re.fullmatch(rf"dtrain train: error: checkpoint {re.escape(path)}: {message}.*", line), line


def _position(epoch: int, batch: int, step: int):
    def edit(meta, arrays):
        meta["trainer"].update(epoch=epoch, batch=batch, step=step, step_at_epoch_start=step - batch)
    return edit


def test_a_position_past_the_end_of_the_run_is_refused(ck):
    path = rewrite(ck / "ckpt-00000003.npz", ck / "later.npz", _position(epoch=5, batch=0, step=35))
    assert load_checkpoint(path)["trainer"]["epoch"] == 5  # consistent in itself...
    with pytest.raises(CheckpointError, match=rf"^checkpoint {re.escape(path)}: trainer\.epoch is 5, past the end "
                                              r"of this run \(--epochs 1\); pass --epochs 5 or more to continue it$"):
        build_job(config(resume=path))  # ...but it would train nothing
    assert build_job(config(epochs=5, resume=path)).state.epoch == 5
    path = rewrite(ck / "ckpt-00000003.npz", ck / "batch.npz", _position(epoch=0, batch=9, step=9))
    with pytest.raises(CheckpointError, match=rf"^checkpoint {re.escape(path)}: trainer\.batch is 9, past the end "
                                              r"of an epoch of this run \(7 batches per epoch\)$"):
        build_job(config(resume=path))


def _rng(key: str, value):
    def edit(meta, arrays):
        target = meta["rng"][0]
        *parents, last = key.split(".")
        for k in parents:
            target = target[k]
        target[last] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (_rng("seed", -1), r"rng\[0\]\.seed must be a non-negative integer, got -1"),
    (_rng("cpu.state.state", -1), r"rng\[0\]\.cpu\.state\.state must be an integer in \[0, 2\*\*128\), got -1"),
    (_rng("cpu.state.inc", 2**200), r"rng\[0\]\.cpu\.state\.inc must be an integer in \[0, 2\*\*128\)"),
    (_rng("cpu.has_uint32", "x"), r"rng\[0\]\.cpu\.has_uint32 must be 0 or 1, got 'x'"),
    (_rng("cpu.bit_generator", "MT19937"), r"rng\[0\]\.cpu\.bit_generator must be 'PCG64', got 'MT19937'"),
    (lambda meta, arrays: meta.update(rng="abc"), r"rng must be a list, got 'abc'"),
    (lambda meta, arrays: meta.update(config=[1]), r"config must be an object, got \[1\]"),
    (lambda meta, arrays: meta.update(compression=[1]), r"compression\[0\] must be an object \(that rank's "
                                                         r"compression state\), got 1"),
    (lambda meta, arrays: meta.update(world_size=0), r"world_size must be a positive integer, got 0"),
    (lambda meta, arrays: meta["optimizer"].update(state={"__intdict__": [["x", 1]]}),
     r"optimizer\.state must be a list of \[integer, value\] pairs, got \[\['x', 1\]\]"),
    (lambda meta, arrays: arrays.update({"model/0.weight": np.ones((8, 4), complex)}),
     r"array 'model/0\.weight' has dtype complex128; a checkpoint holds real numbers only"),
    (lambda meta, arrays: meta["model"].update({"0.weight": [[1.0] * 4] * 8}),
     r"model\['0\.weight'\] must be an array, got \[\[1\.0, "),
    (lambda meta, arrays: meta["optimizer"]["state"]["__intdict__"][0][1].update(momentum_buffer="x"),  # a TypeError
     r"optimizer\.state\[0\]\.momentum_buffer must be an array or a number, got 'x'"),         # in the first step
    (lambda meta, arrays: meta["optimizer"].update(param_groups=5), r"optimizer\.param_groups must be a list of "
                                                                     r"objects, got 5"),
], ids=["seed", "pcg-state", "pcg-inc", "has-uint32", "bit-generator", "rng-str", "config-list", "compression",
        "world-size", "intdict", "complex", "model-list", "optimizer-buffer-str", "param-groups"])
def test_crafted_rng_and_layout_fields_are_refused(ck, edit, message):
    path = rewrite(ck / "ckpt-00000003.npz", ck / "crafted.npz", edit)
    with pytest.raises(CheckpointError, match=rf"^checkpoint {re.escape(path)}: {message}"):
        build_job(config(resume=path))


# -- item 8: FIFOs, devices, sizes ------------------------------------------------------------------------

def test_a_fifo_as_resume_path_is_refused_without_blocking(tmp_path, no_hang):
    fifo = tmp_path / "ckpt.npz"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match=rf"^checkpoint {re.escape(str(fifo))} is a FIFO \(named pipe\), "
                                              r"not a regular file$"):
        no_hang(load_checkpoint, str(fifo))
    line = no_hang(cli_error, "--out", str(tmp_path / "out"), "--resume", str(fifo))
    assert line == f"dtrain train: error: checkpoint {fifo} is a FIFO (named pipe), not a regular file"


def test_a_symlinked_fifo_among_the_checkpoints_is_skipped(ck, no_hang):
    os.mkfifo(ck.parent / "pipe")
    link = ck / "ckpt-00000005.npz"
    link.symlink_to(ck.parent / "pipe")
    (ck / "latest.json").unlink()  # no manifest: the folder is scanned
    manager = CheckpointManager(str(ck))
    good, skipped = no_hang(manager.last_good)
    assert good == str(ck / "ckpt-00000003.npz")
    assert skipped == [(str(link), "is a FIFO (named pipe), not a regular file")]
    with pytest.raises(CheckpointError, match=rf"^checkpoint {re.escape(str(link))} is a FIFO"):
        no_hang(build_job, config(checkpoint_dir=str(ck), resume="latest"))


@pytest.mark.parametrize("manifest_version", [1, 2])
def test_a_fifo_named_by_the_manifest_is_named_without_blocking(ck, manifest_version, no_hang):
    newest = ck / "ckpt-00000003.npz"
    if manifest_version == 1:  # a SHA-256 but no size: the file used to be hashed, i.e. read
        digest = hashlib.sha256(newest.read_bytes()).hexdigest()
        (ck / "latest.json").write_text(json.dumps({"latest": newest.name, "step": 3, "sha256": digest}))
    newest.unlink()
    os.mkfifo(newest)
    with pytest.raises(CheckpointError, match=rf"^checkpoint {re.escape(str(newest))} is a FIFO \(named pipe\), not "
                                              r"a regular file; the previous good checkpoint is .*ckpt-00000002"):
        no_hang(CheckpointManager(str(ck)).latest)


def test_saving_next_to_a_fifo_does_not_block(ck, no_hang):
    (ck / "latest.json").unlink()
    os.mkfifo(ck / "ckpt-00000000.npz")  # found by the scan; never hashed
    trainer = build_job(config(max_steps=3, checkpoint_dir=str(ck), resume=str(ck / "ckpt-00000003.npz")))
    path = no_hang(trainer.checkpoints.manager.save, trainer.state_dict())
    listed = [e["file"] for e in json.loads((ck / "latest.json").read_text())["checkpoints"]]
    assert path == str(ck / "ckpt-00000003.npz") and "ckpt-00000000.npz" not in listed


def test_dev_zero_or_an_oversized_file_as_latest_json_is_refused(ck, monkeypatch, no_hang):
    manifest = ck / "latest.json"
    manifest.unlink()
    manifest.symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match=rf"^checkpoint manifest {re.escape(str(manifest))} is a character "
                                              r"device, not a regular file; the newest good checkpoint is"):
        no_hang(CheckpointManager(str(ck)).latest)
    manifest.unlink()
    write_manifest(ck)
    monkeypatch.setattr(ckpt_module, "MAX_MANIFEST_BYTES", 100)
    size = manifest.stat().st_size
    with pytest.raises(CheckpointError, match=rf"^checkpoint manifest {re.escape(str(manifest))} is {size:,} bytes, "
                                              r"more than the 100 bytes such a file can sensibly be"):
        CheckpointManager(str(ck)).latest()


def test_oversized_metadata_and_compressed_members_are_refused(ck, monkeypatch):
    path = ck / "ckpt-00000003.npz"
    monkeypatch.setattr(ckpt_module, "MAX_METADATA_BYTES", 64)
    with pytest.raises(CheckpointError, match=r"the metadata entry is [\d,]+ bytes, more than the 64 such metadata"):
        load_checkpoint(str(path))
    monkeypatch.undo()
    arrays, meta = load_npz(str(path), with_metadata=True)
    arrays["__metadata__.json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez_compressed(str(ck / "zipped.npz"), **arrays)
    with pytest.raises(CheckpointError, match=r"member '.*\.npy' is compressed; only uncompressed archives"):
        load_checkpoint(str(ck / "zipped.npz"))
