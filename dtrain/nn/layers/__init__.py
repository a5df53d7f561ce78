"""The layers: each a Module with torch's constructor signature, parameter names and shapes."""

from .activation import ELU, GELU, Dropout, Embedding, LeakyReLU, ReLU, Sigmoid, SiLU, Softmax, Tanh
from .attention import MultiheadAttention, TransformerEncoder, TransformerEncoderLayer
from .linear import AvgPool2d, Conv2d, Flatten, Identity, Linear, MaxPool2d
from .norm import BatchNorm1d, BatchNorm2d, LayerNorm
from .rnn import LSTM, RNN

__all__ = [
    "ELU", "GELU", "LSTM", "RNN", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv2d", "Dropout", "Embedding",
    "Flatten", "Identity", "LayerNorm", "LeakyReLU", "Linear", "MaxPool2d", "MultiheadAttention", "ReLU", "SiLU",
    "Sigmoid", "Softmax", "Tanh", "TransformerEncoder", "TransformerEncoderLayer",
]
