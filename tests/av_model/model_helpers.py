"""Tiny AVModel configs over the session's tiny checkpoints."""

import dataclasses

import torch

from av_model.config import ModelConfig
from av_model.tiny import tiny_model_config

TURNS = [{"role": "user", "content": "<AUD_VIS>\nWhat colour is the circle?"},
         {"role": "assistant", "content": "red"}]


def tiny_config(paths: dict[str, str], kind: str = "causal_qformer", mode: str = "lora",
                events: bool = False, **connector) -> ModelConfig:
    cfg = tiny_model_config(paths, kind, events)
    return dataclasses.replace(
        cfg, connector=dataclasses.replace(cfg.connector, **connector),
        llm=dataclasses.replace(cfg.llm, mode=mode))


def replace(cfg, **kw):
    return dataclasses.replace(cfg, **kw)


def features(t: int = 7, a: int = 160, dv: int = 32, da: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, 17, dv, generator=g), torch.randn(a, da, generator=g)
