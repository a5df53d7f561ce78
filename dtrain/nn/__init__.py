"""dtrain.nn: neural-network building blocks with torch's names.

``Module``/``Parameter`` (module.py, parameter.py), the layers (layers/), ``functional`` (imported
as F: the stateless functions), ``init`` (initialisers) and ``utils`` (clipping, safetensors/npz).
"""

from . import functional, init, utils
from .layers import (
    ELU,
    GELU,
    LSTM,
    RNN,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Embedding,
    Flatten,
    Identity,
    LayerNorm,
    LeakyReLU,
    Linear,
    MaxPool2d,
    MultiheadAttention,
    ReLU,
    Sigmoid,
    SiLU,
    Softmax,
    Tanh,
    TransformerEncoder,
    TransformerEncoderLayer,
)
from .module import Module, ModuleDict, ModuleList, Sequential, StateDictError
from .parameter import Parameter

__all__ = [
    "ELU", "GELU", "LSTM", "RNN", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv2d", "Dropout", "Embedding",
    "Flatten", "Identity", "LayerNorm", "LeakyReLU", "Linear", "MaxPool2d", "Module", "ModuleDict", "ModuleList",
    "MultiheadAttention", "Parameter", "ReLU", "Sequential", "SiLU", "Sigmoid", "Softmax", "StateDictError", "Tanh",
    "TransformerEncoder", "TransformerEncoderLayer", "functional", "init", "utils",
]
