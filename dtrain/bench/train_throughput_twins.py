"""PyTorch twins of the zoo models the training-throughput benchmark measures (same module tree and
parameter names as dtrain's, so dtrain's ``state_dict`` loads into them), and their training step.

``torch`` is passed in (from :func:`dtrain.bench.peers.import_torch`): the peer is optional.
"""

from __future__ import annotations

import numpy as np

from .peers import CycledStep, torch_twin_of

LR = 0.01
MOMENTUM = 0.9


def torch_resnet(torch, width: int = 16, blocks=(1, 1), n_outputs: int = 10):
    """Mirror of dtrain.models.ResNet / BasicBlock (same attribute names)."""
    tnn = torch.nn

    class BasicBlock(tnn.Module):
        def __init__(self, in_c, out_c, stride=1):
            super().__init__()
            self.conv1 = tnn.Conv2d(in_c, out_c, 3, stride=stride, padding=1, bias=False)
            self.bn1 = tnn.BatchNorm2d(out_c)
            self.relu = tnn.ReLU()
            self.conv2 = tnn.Conv2d(out_c, out_c, 3, padding=1, bias=False)
            self.bn2 = tnn.BatchNorm2d(out_c)
            self.downsample = None
            if stride != 1 or in_c != out_c:
                self.downsample = tnn.Sequential(tnn.Conv2d(in_c, out_c, 1, stride=stride, bias=False),
                                                 tnn.BatchNorm2d(out_c))

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    class ResNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.stem = tnn.Sequential(tnn.Conv2d(1, width, 3, padding=1, bias=False), tnn.BatchNorm2d(width),
                                       tnn.ReLU())
            stages, in_c = [], width
            for i, n in enumerate(blocks):
                out_c = width * 2**i
                for j in range(n):
                    stages.append(BasicBlock(in_c, out_c, stride=2 if (i > 0 and j == 0) else 1))
                    in_c = out_c
            self.layers = tnn.Sequential(*stages)
            self.fc = tnn.Linear(in_c, n_outputs)

        def forward(self, x):
            x = self.layers(self.stem(x))
            return self.fc(x.mean(dim=(2, 3)))

    return ResNet()


def torch_twin(torch, cfg, model):
    """The torch twin of a benchmark config's zoo ``model`` (same module tree and parameter names)."""
    if cfg.model in ("mlp", "cnn"):  # Sequentials: mirrored layer by layer
        return torch_twin_of(torch, model)
    if cfg.model == "resnet":
        return torch_resnet(torch)
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
