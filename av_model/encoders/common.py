"""Helpers shared by the frozen encoders: dtype names, freezing, device choice."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open
from torch import nn
from transformers.utils import cached_file

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def freeze(module: nn.Module) -> nn.Module:
    """No gradients and eval mode: frozen towers never train and never drop out."""
    module.requires_grad_(False)
    module.eval()
    return module


class FrozenEncoder(nn.Module):
    """Base for encoders whose weights never change: ``train()`` keeps them in eval mode.

    Pinning eval matters when an encoder sits inside a model being trained (serving and
    evaluation reuse these classes): ``model.train()`` must not switch on dropout here.
    """

    def train(self, mode: bool = True) -> "FrozenEncoder":
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


def read_prefixed(name_or_path: str, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Tensors whose names start with one of ``prefixes``, reading only the shards that hold
    them: a tower inside a larger checkpoint (BLIP's vision + Q-Former next to a 13B LLM,
    CLAP's audio next to its text model) loads without the rest."""
    index = cached_file(name_or_path, "model.safetensors.index.json",
                        _raise_exceptions_for_missing_entries=False)
    if index:
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        files = sorted({v for k, v in weight_map.items() if k.startswith(prefixes)})
    else:
        files = ["model.safetensors"]
    out: dict[str, torch.Tensor] = {}
    for shard in files:
        with safe_open(cached_file(name_or_path, shard), framework="pt") as f:
            for key in f.keys():
                if key.startswith(prefixes):
                    out[key] = f.get_tensor(key)
    return out


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
