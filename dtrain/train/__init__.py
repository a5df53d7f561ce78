"""The training job: Trainer loop, metrics and monitoring, checkpoints, configuration.

    from dtrain.train import Trainer
    trainer = Trainer(model, optimizer, train_loader, test_loader, loss_fn=F.cross_entropy, epochs=10)
    summary = trainer.fit()

``dtrain.train.job.run(config)`` is what ``dtrain train`` runs.
"""

from . import monitor
from .checkpoint import CheckpointError, CheckpointManager, load_checkpoint, param_checksum, save_checkpoint
from .log import RankLogger
from .sync import LocalSync
from .trainer import SUMMARY_KEYS, EarlyStopping, Trainer, TrainState

__all__ = [
    "SUMMARY_KEYS", "CheckpointError", "CheckpointManager", "EarlyStopping", "LocalSync", "RankLogger",
    "TrainState", "Trainer", "load_checkpoint", "monitor", "param_checksum", "save_checkpoint",
]
