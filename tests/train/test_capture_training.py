"""`dtrain train --capture` (TrainOptions(capture=True)): each step traced once and replayed trains to the
same bits as the eager loop (the monitor's recording steps run eagerly in both), and what capture cannot
replay is refused up front."""

from __future__ import annotations

import pytest

from dtrain import nn, optim
from dtrain.data import DataLoader, load_dataset
from dtrain.models import loss_and_accuracy
from dtrain.train import Trainer, TrainOptions
from dtrain.train.config import resolve_config
from dtrain.train.job import model_defaults, run


def config(**flags):
    flags.setdefault("progress", False)
    return resolve_config(flags, None, model_defaults)


@pytest.mark.parametrize("flags", [dict(epochs=2, dropout=0.1), dict(model="cnn", max_steps=25),
                                   dict(model="resnet", max_steps=12), dict(model="transformer", max_steps=6),
                                   dict(model="lstm", max_steps=6)],
                         ids=["mlp-dropout", "cnn", "resnet", "transformer", "lstm"])
def test_captured_training_equals_eager_bit_for_bit(flags):
    eager = run(config(**flags))
    captured = run(config(**flags, capture=True))
    assert captured["steps"] == eager["steps"]
    assert captured["param_checksum"] == eager["param_checksum"]
    assert captured["test_loss"] == eager["test_loss"]
    assert captured["test_accuracy"] == eager["test_accuracy"]


def test_capture_refuses_what_it_cannot_replay():
    with pytest.raises(ValueError, match="capture needs precision fp32 \\(autocast's casts are not replayed\\), "
                                         "got 'bf16'"):
        TrainOptions(capture=True, precision="bf16")
    model = nn.Sequential(nn.Linear(64, 10))
    loss_fn, correct_fn = loss_and_accuracy("classification")
    loader = DataLoader(load_dataset("digits").train, batch_size=32)
    with pytest.raises(ValueError, match="capture: a loss scale cannot be replayed"):
        Trainer(model, optim.SGD(model.parameters(), lr=0.1), loader, loss_fn=loss_fn, correct_fn=correct_fn,
                options=TrainOptions(capture=True, loss_scale=128.0))


def test_the_cli_reports_a_model_capture_cannot_replay_in_one_line(monkeypatch, capsys):
    from dtrain.autograd.ops.nn import FusedEmbedding
    from dtrain.cli import main

    monkeypatch.setattr(FusedEmbedding, "capturable", False)  # as an op nobody has reviewed for capture
    assert main(["train", "--model", "lstm", "--capture", "--max-steps", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert ("dtrain train: error: captured step: op FusedEmbedding cannot be replayed (its frontend makes choices a "
            "replay would not re-check); run without capture") in err
    assert "Traceback" not in err
