"""PyTorch twins of the zoo models the training-throughput benchmark measures (same module tree and
parameter names as dtrain's, so dtrain's ``state_dict`` loads into them), and their training step.

``torch`` is passed in (from :func:`dtrain.bench.peers.import_torch`): the peer is optional.
"""

from __future__ import annotations

import numpy as np

from .peers import CycledStep, torch_twin_of

LR = 0.01
MOMENTUM = 0.9


def torch_twin(torch, cfg, model):
    """The torch twin of a benchmark config's zoo ``model`` (same module tree and parameter names)."""
    if cfg.model in ("mlp", "cnn", "resnet"):  # mirrored module by module, forwards shared
        return torch_twin_of(torch, model)
    raise ValueError(f"train_throughput: no torch twin for model {cfg.model!r} (expected mlp, cnn or resnet)")


class TorchRaw(CycledStep):
    """The PyTorch eager twin of DtrainRaw."""

    def __init__(self, torch, model, batches):
        self.torch = torch
        self.model = self.net = model
        self.loss_fn = torch.nn.functional.cross_entropy
        self.opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        self.batches = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]

    def eval_logits(self, i: int) -> np.ndarray:
        self.model.eval()
        with self.torch.no_grad():
            out = self.model(self.batches[i][0]).numpy().copy()
        self.model.train()
        return out
