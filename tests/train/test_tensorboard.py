"""``dtrain train --tensorboard``: TensorBoard scalars beside metrics.jsonl (dtrain.train.tensorboard), read
back from the event files; the missing-package and missing---out errors; resume purging; the scalars."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from dtrain.cli import main
from dtrain.train.config import ConfigError, resolve_config
from dtrain.train.job import model_defaults
from dtrain.train.tensorboard import TensorBoardWriter, scalars

tensorboardX = pytest.importorskip("tensorboardX")  # the "tensorboard" extra (in dev)

MISSING = ("--tensorboard needs the tensorboardX package (import of tensorboardX halted; None in sys.modules): "
           "pip install tensorboardX")


def read_events(logdir: Path) -> list:
    """Every Event of the TFRecord event files in ``logdir`` (length, its CRC, the Event protobuf, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            events.append(Event.FromString(data[pos + 12:pos + 12 + length]))
            pos += 12 + length + 4
    return events


def scalar_series(events) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for ev in events:
        for value in ev.summary.value:
            out.setdefault(value.tag, {})[ev.step] = value.simple_value
    return out


def test_a_run_writes_each_epochs_scalars_next_to_metrics_jsonl(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "3", "--batch-size", "128", "--out", str(out), "--tensorboard",
                 "--no-progress"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    files = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1
    series = scalar_series(read_events(out / "tensorboard"))
    assert sorted(series["test_accuracy"]) == [1, 2, 3] == [r["epoch"] for r in records]
    for r in records:
        for tag in ("test_accuracy", "test_loss", "train_loss", "train_accuracy", "lr", "grad_norm", "weight_norm"):
            assert series[tag][r["epoch"]] == pytest.approx(r[tag], rel=1e-6), tag  # stored as float32
        for layer, norm in r["grad_norms"].items():
            assert series[f"grad_norms/{layer}"][r["epoch"]] == pytest.approx(norm, rel=1e-6)
        for tag, value in scalars(r).items():  # every number of the record, and nothing else
            assert series[tag][r["epoch"]] == pytest.approx(value, rel=1e-6), tag
    assert set(series) == set().union(*(scalars(r) for r in records))
    assert not {"epoch", "step", "epoch_complete"} & set(series)  # the record's position, not scalars


def test_toml_key_and_a_new_run_replaces_the_old_events(tmp_path):
    toml = tmp_path / "job.toml"
    toml.write_text(f'epochs = 1\nbatch_size = 256\nout = "{(tmp_path / "run").as_posix()}"\ntensorboard = true\n')
    assert main(["train", "--config", str(toml), "--no-progress"]) == 0
    first = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert main(["train", "--config", str(toml), "--no-progress", "--overwrite"]) == 0
    second = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(first) == len(second) == 1  # the first run's file was removed, not added to
    assert sorted(scalar_series(read_events(tmp_path / "run" / "tensorboard"))["test_accuracy"]) == [1]


def test_missing_tensorboardx_is_a_config_error_naming_pip(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # `import tensorboardX` now raises ImportError
    with pytest.raises(ConfigError) as info:
        resolve_config({"tensorboard": True, "out": str(tmp_path / "run")}, None, model_defaults)
    assert str(info.value) == MISSING
    assert main(["train", "--tensorboard", "--out", str(tmp_path / "run"), "--epochs", "1"]) == 2
    assert MISSING in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything was built or written


def test_tensorboard_needs_out():
    with pytest.raises(ConfigError) as info:
        resolve_config({"tensorboard": True}, None, model_defaults)
    assert str(info.value) == "--tensorboard writes its event files to --out DIR/tensorboard: it needs --out DIR"
    assert resolve_config({}, None, model_defaults)["tensorboard"] is False


def test_resumed_writer_purges_from_the_resumed_epoch_and_keeps_old_files(tmp_path):
    logdir = tmp_path / "tb"
    first = TensorBoardWriter(str(logdir), resumed=False)
    for epoch in (1, 2, 3):
        first.record({"epoch": epoch, "step": 10 * epoch, "test_accuracy": epoch / 10})
    first.close()
    resumed = TensorBoardWriter(str(logdir), resumed=True)
    resumed.record({"epoch": 2, "step": 20, "test_accuracy": 0.25})
    resumed.close()
    resumed.close()  # twice: a no-op
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 2
    events = read_events(logdir)
    starts = [ev.step for ev in events if ev.HasField("session_log") and ev.session_log.status == 1]  # START
    assert starts == [2]  # TensorBoard hides the first file's events from epoch 2 on
    fresh = TensorBoardWriter(str(logdir), resumed=False)
    assert list(logdir.glob("events.out.tfevents.*")) == []  # a new run starts from an empty folder
    fresh.close()


def test_scalars_flatten_one_level_and_skip_what_is_not_a_number():
    record = {"epoch": 3, "step": 7, "epoch_complete": True, "train_loss": 0.5, "test_loss": None, "lr": 1,
              "grad_norms": {"0": 0.25, "2": 1.5}, "dead_relu": {"1": 0.0}, "flag": False, "note": "x",
              "bytes_per_step": float("nan"), "history": [1, 2]}
    assert scalars(record) == {"train_loss": 0.5, "lr": 1.0, "grad_norms/0": 0.25, "grad_norms/2": 1.5,
                               "dead_relu/1": 0.0}
