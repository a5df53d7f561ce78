"""The model zoo used by ``dtrain train --model NAME`` and the benchmarks.

Each builder takes the data set's description (input shape per sample, number of classes or
outputs, task) plus its own options, and returns an ``nn.Module``. ``MODELS[name].input_kind``
says which input layout it needs ("flat", "image" (C, H, W) or "tokens" (seq_len,)), so the job
loads the data set in the matching shape.

    model = build_model("cnn", input_shape=(1, 8, 8), n_outputs=10)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .. import nn
from ..autograd import ops
from ..autograd.tensor import Tensor
from ..spec import is_int

__all__ = ["MODELS", "CharLSTM", "CharTransformer", "ModelSpec", "ResNet", "build_model", "count_correct",
           "dense_parameters_at_least", "loss_and_accuracy"]


def _as_widths(hidden) -> tuple[int, ...]:
    if isinstance(hidden, int):
        hidden = (hidden,)
    elif isinstance(hidden, str):
        try:
            hidden = tuple(int(h) for h in hidden.replace(" ", "").split(","))  # '1,,2': an empty width is an error
        except ValueError:
            raise ValueError(f"hidden must be comma-separated positive integers like '256,128', "
                             f"got {hidden!r}") from None
    hidden = tuple(hidden)
    if any(not is_int(h) or h < 1 for h in hidden):
        raise ValueError(f"hidden layer widths must be positive integers, got {hidden!r}")
    return hidden


def mlp(input_shape: tuple, n_outputs: int, hidden=(128,), dropout: float = 0.0, activation: str = "relu",
        **_unused) -> nn.Module:
    """Flatten → [Linear → activation (→ Dropout)] per hidden width → Linear(n_outputs)."""
    acts = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU, "elu": nn.ELU}
    if activation not in acts:
        raise ValueError(f"unknown activation {activation!r}; expected one of {', '.join(sorted(acts))}")
    layers: list[nn.Module] = [nn.Flatten()] if len(input_shape) > 1 else []
    width = math.prod(input_shape)
    for h in _as_widths(hidden):
        layers += [nn.Linear(width, h), acts[activation]()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


def _image_shape(name: str, input_shape: tuple) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"model {name!r} needs image input (C, H, W), got samples of shape {input_shape}; "
                         "use an image data set (digits, mnist:DIR, synthetic with image=H)")
    return input_shape


def cnn(input_shape: tuple, n_outputs: int, channels=(16, 32), hidden: int | tuple = 128, dropout: float = 0.25,
        **_unused) -> nn.Module:
    """LeNet-style: [Conv3x3(pad 1) → ReLU → MaxPool2] x 2 → Flatten → Linear → ReLU → Dropout → Linear."""
    c, h, w = _image_shape("cnn", input_shape)
    c1, c2 = _as_widths(channels)
    (fc,) = _as_widths(hidden)[:1]
    if h < 4 or w < 4:
        raise ValueError(f"model 'cnn' pools twice by 2 and needs images of at least 4x4, got {h}x{w}")
    return nn.Sequential(
        nn.Conv2d(c, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * (h // 4) * (w // 4), fc), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(fc, n_outputs),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut, as in ResNet-18."""

    def __init__(self, in_c: int, out_c: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_c, out_c, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_c)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(out_c, out_c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_c)
        self.downsample = None
        if stride != 1 or in_c != out_c:
            self.downsample = nn.Sequential(nn.Conv2d(in_c, out_c, 1, stride=stride, bias=False), nn.BatchNorm2d(out_c))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet(nn.Module):
    """A small residual CNN: conv-BN-ReLU stem, stages of BasicBlocks (widths double, stride 2 after the
    first stage), global average pooling, Linear head."""

    def __init__(self, input_shape: tuple, n_outputs: int, width: int = 16, blocks=(1, 1), **_unused):
        super().__init__()
        c, _, _ = _image_shape("resnet", input_shape)
        blocks = _as_widths(blocks)
        self.stem = nn.Sequential(nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        stages, in_c = [], width
        for i, n in enumerate(blocks):
            out_c = width * 2**i
            for j in range(n):
                stages.append(BasicBlock(in_c, out_c, stride=2 if (i > 0 and j == 0) else 1))
                in_c = out_c
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(in_c, n_outputs)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(self.stem(x))
        return self.fc(x.mean(axis=(2, 3)))


class CharLSTM(nn.Module):
    """Character-level language model: Embedding → LSTM → Linear over the vocabulary, per time step.

    Input (N, T) integer ids; output (N, T, vocab) logits of the next character.
    """

    def __init__(self, input_shape: tuple, n_outputs: int, embed: int = 32, hidden: int | tuple = 128,
                 num_layers: int = 1, dropout: float = 0.0, **_unused):
        super().__init__()
        (h,) = _as_widths(hidden)[:1]
        self.embedding = nn.Embedding(n_outputs, embed)
        self.lstm = nn.LSTM(embed, h, num_layers=num_layers, batch_first=True, dropout=dropout)
        self.head = nn.Linear(h, n_outputs)

    def forward(self, tokens) -> Tensor:
        out, _ = self.lstm(self.embedding(tokens))
        return self.head(out)


class CharTransformer(nn.Module):
    """Character-level causal (GPT-style) language model: token + learned position embeddings, pre-norm
    TransformerEncoderLayers with a causal mask, final LayerNorm, Linear over the vocabulary.

    Input (N, T) integer ids with T <= the seq_len it was built for; output (N, T, vocab) logits.
    """

    def __init__(self, input_shape: tuple, n_outputs: int, d_model: int = 64, nhead: int = 4, num_layers: int = 2,
                 dim_feedforward: int = 128, dropout: float = 0.0, **_unused):
        super().__init__()
        (seq_len,) = input_shape
        self.seq_len = seq_len
        self.embedding = nn.Embedding(n_outputs, d_model)
        w = self.embedding.weight
        self.pos = nn.Parameter(w.xp.zeros((seq_len, d_model), dtype=w.dtype))  # learned positions, GPT-2's init
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation="gelu", batch_first=True,
                                       norm_first=True)
            for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_outputs)

    def forward(self, tokens) -> Tensor:
        t = tokens.shape[-1]
        if t > self.seq_len:
            raise ValueError(f"CharTransformer was built for sequences of at most {self.seq_len}, got {t}")
        x = self.embedding(tokens) + self.pos[:t]
        for block in self.blocks:
            x = block(x, is_causal=True)
        return self.head(self.norm(x))


@dataclass(frozen=True)
class ModelSpec:
    """A zoo entry: its builder, the input layout it needs and the training defaults that suit it."""

    build: Callable[..., nn.Module]
    input_kind: str  # "flat" | "image" | "tokens"
    tasks: tuple[str, ...]
    defaults: dict = field(default_factory=dict)
    doc: str = ""


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec(mlp, "flat", ("classification", "regression"), {},
                     "multi-layer perceptron (hidden widths via --hidden, e.g. 256,128)"),
    "cnn": ModelSpec(cnn, "image", ("classification", "regression"), {"lr": 0.02}, "LeNet-style CNN"),
    "resnet": ModelSpec(ResNet, "image", ("classification", "regression"), {"optimizer": "adam", "lr": 3e-3},
                        "small residual CNN with BatchNorm"),
    "lstm": ModelSpec(CharLSTM, "tokens", ("lm",),
                      {"dataset": "text", "optimizer": "adam", "lr": 5e-3, "batch_size": 64, "epochs": 3},
                      "character-level LSTM language model"),
    "transformer": ModelSpec(CharTransformer, "tokens", ("lm",),
                             {"dataset": "text", "optimizer": "adam", "lr": 3e-3, "batch_size": 64, "epochs": 3},
                             "character-level causal transformer language model"),
}


def build_model(name: str, input_shape: tuple, n_outputs: int, task: str = "classification", **options) -> nn.Module:
    """Build zoo model ``name`` for samples of ``input_shape`` and ``n_outputs`` classes/outputs/vocab.

    Raises ValueError for an unknown name or a model that cannot handle the task or input shape.
    """
    spec = MODELS.get(str(name).lower())
    if spec is None:
        raise ValueError(f"unknown model {name!r}; expected one of: {', '.join(sorted(MODELS))}")
    if task not in spec.tasks:
        raise ValueError(f"model {name!r} handles {' or '.join(spec.tasks)} data, but the data set is a {task} task")
    return spec.build(tuple(input_shape), int(n_outputs), **{k: v for k, v in options.items() if v is not None})


def dense_parameters_at_least(name: str, input_shape: tuple, n_outputs: int, hidden) -> int:
    """A lower bound on the parameters of zoo model ``name`` from its dense layers alone, computed without
    building it (so ``--hidden 200000000`` can be refused before anything is allocated): the MLP's weight
    matrices exactly; for the other models the one hidden-size-by-outputs layer they all end with."""
    if hidden is None:
        return 0
    widths = _as_widths(hidden)
    if str(name).lower() == "mlp":
        chain = (math.prod(input_shape), *widths, int(n_outputs))
        return sum(a * b for a, b in itertools.pairwise(chain))
    return widths[0] * int(n_outputs)


def loss_and_accuracy(task: str):
    """(loss_fn(output, target), correct_fn(output, target) -> number correct or None) for a task."""
    if task == "regression":
        return (lambda out, y: ops.mse_loss(out, y)), None

    def ce(out, y):
        # the language model's targets are flattened by an op (not by NumPy beside the graph), so that a captured
        # step (dtrain train --capture) reads each call's targets
        return ops.cross_entropy(out.reshape(-1, out.shape[-1]), Tensor(y).reshape(-1)) if task == "lm" else \
            ops.cross_entropy(out, y)

    return ce, count_correct


def count_correct(output: Tensor, target) -> int:
    """How many rows of ``output`` (..., classes) have their argmax at the integer ``target``."""
    hits = output.data.argmax(-1) == target
    return int(np.count_nonzero(hits)) if type(hits) is np.ndarray else int(hits.sum())  # (count_nonzero: no wrapper)
