"""The Trainer and the training job: reproducibility, exact resume, zoo models learning, parity with torch."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dtrain as dt
from dtrain import nn
from dtrain.data import DataLoader, load_dataset
from dtrain.models import build_model, loss_and_accuracy
from dtrain.train import (
    CheckpointError,
    CheckpointManager,
    EarlyStopping,
    ReportOptions,
    Trainer,
    TrainOptions,
    load_checkpoint,
)
from dtrain.train.config import resolve_config
from dtrain.train.job import build_job, model_defaults, run


def config(**flags):
    flags.setdefault("progress", False)
    return resolve_config(flags, None, model_defaults)


def test_same_seed_same_bits_different_seed_different():
    a = run(config(epochs=2, dropout=0.1))
    b = run(config(epochs=2, dropout=0.1))
    c = run(config(epochs=2, dropout=0.1, seed=1))
    assert a["param_checksum"] == b["param_checksum"] != c["param_checksum"]
    assert a["test_loss"] == b["test_loss"]


@pytest.mark.parametrize("stop, every", [(30, "0"), (23, "0"), (40, "7")], ids=["mid-epoch", "epoch-end", "every-7"])
def test_resume_is_bitwise_exact(tmp_path, stop, every):
    """Stop after `stop` steps (checkpoint at the end), resume, and finish: the same bits as one run —
    float64, Adam state, a warm-up + cosine schedule, dropout RNG and shuffling all included."""
    common = dict(epochs=3, dtype="float64", optimizer="adam", lr=3e-3, scheduler="cosine", warmup_steps=10,
                  dropout=0.2, hidden="32")
    full = run(config(**common))
    ck = tmp_path / "ck"
    run(config(**common, max_steps=stop, checkpoint_dir=str(ck), checkpoint_every=every))
    resumed = run(config(**common, checkpoint_dir=str(ck), resume="latest"))
    assert resumed["steps"] == full["steps"] == 69
    assert resumed["param_checksum"] == full["param_checksum"]
    assert resumed["test_loss"] == full["test_loss"]


def test_checkpoint_manager_keeps_last_k_and_detects_corruption(tmp_path):
    ck = tmp_path / "ck"
    run(config(epochs=1, checkpoint_dir=str(ck), checkpoint_every="5", keep_checkpoints=2))
    files = sorted(p.name for p in ck.glob("ckpt-*.npz"))
    assert files == ["ckpt-00000020.npz", "ckpt-00000023.npz"]
    manager = CheckpointManager(str(ck))
    latest = manager.latest()
    assert latest.endswith("ckpt-00000023.npz")
    meta = load_checkpoint(latest)
    assert meta["trainer"]["step"] == 23 and meta["config"]["keep_checkpoints"] == 2
    assert set(meta["model"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    with open(latest, "r+b") as f:
        f.seek(100)
        f.write(b"garbage")
    with pytest.raises(CheckpointError, match="does not match the SHA-256"):
        manager.latest()
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.zeros(3))
    with pytest.raises(CheckpointError, match="is not a dtrain checkpoint"):
        load_checkpoint(str(foreign))


def test_resume_into_a_different_model_is_an_error(tmp_path):
    ck = tmp_path / "ck"
    run(config(epochs=1, checkpoint_dir=str(ck)))
    with pytest.raises(CheckpointError, match=r"does not fit this run.*expected shape"):
        build_job(config(epochs=2, hidden="64", checkpoint_dir=str(ck), resume="latest"))


def test_early_stopping_stops():
    summary = run(config(epochs=50, early_stopping=2, lr=0.5, momentum=0.0))
    assert summary["epochs"] < 50


def test_nonfinite_loss_is_an_error():
    message = r"non-finite gradients after the all-reduce at step \d+ \(epoch 1\): the loss was (nan|inf) on rank 0"
    with pytest.raises(FloatingPointError, match=message):
        run(config(epochs=3, lr=1e6, momentum=0.0))


@pytest.mark.parametrize("model, steps", [("resnet", 12), ("lstm", 30), ("transformer", 30)])
def test_zoo_models_learn(model, steps):
    """Brief runs: the training loss falls clearly below its start (full runs are in the closing note)."""
    trainer = build_job(config(model=model, max_steps=steps, epochs=1, batch_size=32, monitor=False))
    first = None
    losses = []
    for x, y in trainer.train_loader.iter_epoch(0):
        loss_sum, _ = trainer.train_step(x, y)
        losses.append(loss_sum / len(x))
        first = first if first is not None else losses[0]
        if len(losses) == steps:
            break
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


def test_trainer_writes_the_metrics_it_promises(tmp_path):
    splits = load_dataset("digits")
    model = build_model("mlp", splits.input_shape, 10)
    loss_fn, correct = loss_and_accuracy("classification")
    t = Trainer(model, dt.optim.SGD(model.parameters(), lr=0.1), DataLoader(splits.train, 128, shuffle=True),
                DataLoader(splits.test, 360), loss_fn=loss_fn, correct_fn=correct, epochs=2,
                report=ReportOptions(out_dir=str(tmp_path)), early_stopping=EarlyStopping(5))
    summary = t.fit()
    rec = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rec) == 2 and summary["steps"] == rec[-1]["step"] == 24
    assert set(rec[0]["grad_norms"]) == {"0", "2"} and set(rec[0]["dead_relu"]) == {"1"}
    assert 0 <= rec[0]["dead_relu"]["1"] <= 1 and rec[0]["grad_norm"] > 0


def test_trainer_validates_arguments():
    model = nn.Linear(2, 2)
    opt = dt.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="epochs must be a positive integer, got 0"):
        Trainer(model, opt, None, loss_fn=None, epochs=0)
    with pytest.raises(ValueError, match="patience must be a positive integer"):
        EarlyStopping(0)


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_loss_trajectory_matches_torch(model_name):
    """Same initial weights + same batches -> the same loss for 20 SGD (momentum) steps, float64, 1e-8."""
    torch = pytest.importorskip("torch")
    dt.set_default_dtype(np.float64)
    splits = load_dataset("digits", image=model_name == "cnn")
    model = build_model(model_name, splits.input_shape, 10, dropout=0.0)
    if model_name == "mlp":
        ref = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
        ref.load_state_dict({k.replace("1.", "0.", 1).replace("3.", "2.", 1): torch.from_numpy(v.copy())
                             for k, v in model.state_dict().items()})
    else:
        ref = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
            torch.nn.Linear(128, 128), torch.nn.ReLU(), torch.nn.Dropout(0.0), torch.nn.Linear(128, 10))
        ref.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})
    ref.double()
    loss_fn, correct = loss_and_accuracy("classification")
    loader = DataLoader(splits.train, batch_size=64, shuffle=True, seed=3)
    trainer = Trainer(model, dt.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), loader, loss_fn=loss_fn,
                      correct_fn=correct, report=ReportOptions(monitor=False),
                      options=TrainOptions(dtype=np.float64))
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    ours, theirs = [], []
    for step, (x, y) in enumerate(loader.iter_epoch(0)):
        if step == 20:
            break
        ours.append(trainer.train_step(x, y)[0] / len(x))
        ref_opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(ref(torch.from_numpy(x.astype(np.float64))), torch.from_numpy(y))
        loss.backward()
        ref_opt.step()
        theirs.append(loss.item())
    np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-10)
    assert ours[-1] < ours[0]
