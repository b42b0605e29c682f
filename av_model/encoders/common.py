"""Helpers shared by the frozen encoders: dtype names, freezing, device choice."""

from __future__ import annotations

import torch
from torch import nn

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
