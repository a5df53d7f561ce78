"""dtrain.nn: neural-network building blocks.

``dtrain.nn.functional`` (imported as F) holds the stateless functions, with torch's signatures.
Modules and layers (Module, Linear, Conv2d, ...) build on it.
"""

from . import functional

__all__ = ["functional"]
