"""The training job: the Trainer loop and its collaborators (reporting, checkpoints, monitoring, signals,
non-finite policy, divergence checks), the sync seams, and the job's configuration.

    from dtrain.train import Trainer
    trainer = Trainer(model, optimizer, train_loader, test_loader, loss_fn=F.cross_entropy, epochs=10)
    summary = trainer.fit()

``dtrain.train.job.run(config)`` is what ``dtrain train`` runs. docs/training.md lists the modules.
"""

from . import monitor
from .checkpoint import CheckpointError, CheckpointManager, load_checkpoint, param_checksum, save_checkpoint
from .checkpointing import Checkpointing
from .divergence import param_digests
from .log import RankLogger
from .options import EarlyStopping, TrainOptions
from .reporting import SUMMARY_KEYS, ReportOptions
from .signals import TrainingInterrupted
from .state import TrainState
from .sync import Collectives, DistributedRunError, GradientSync, LocalCollectives, LocalGradientSync
from .trainer import Trainer

__all__ = [
    "SUMMARY_KEYS", "CheckpointError", "CheckpointManager", "Checkpointing", "Collectives", "DistributedRunError",
    "EarlyStopping", "GradientSync", "LocalCollectives", "LocalGradientSync", "RankLogger", "ReportOptions",
    "TrainOptions", "TrainState", "Trainer", "TrainingInterrupted", "load_checkpoint", "monitor", "param_checksum",
    "param_digests", "save_checkpoint",
]
