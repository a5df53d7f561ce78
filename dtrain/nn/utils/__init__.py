"""Utilities over parameters: gradient clipping and pickle-free state_dict files (safetensors, npz)."""

from .clip import clip_grad_norm_, clip_grad_value_
from .serialization import load_npz, load_safetensors, save_npz, save_safetensors

__all__ = ["clip_grad_norm_", "clip_grad_value_", "load_npz", "load_safetensors", "save_npz", "save_safetensors"]
