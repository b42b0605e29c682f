"""Tiny AVModel configs over the session's tiny checkpoints."""

import dataclasses

import torch

from av_model.config import (AudioEncoderConfig, AudioEventEncoderConfig, ConnectorConfig,
                             EncodersConfig, LLMConfig, ModelConfig, VisualEncoderConfig)

TURNS = [{"role": "user", "content": "<AUD_VIS>\nWhat colour is the circle?"},
         {"role": "assistant", "content": "red"}]


def tiny_config(paths: dict[str, str], kind: str = "causal_qformer", mode: str = "lora",
                events: bool = False, **connector) -> ModelConfig:
    windows = {"qformer": ((0.0,), (4,)), "mrc_qformer": ((2.0, 0.5), (4, 1))}
    window_s, queries = windows.get(kind, ((2.0,), (4,)))
    conn = dict(kind=kind, hidden=32, heads=2, ffn_dim=64, causal_heads=2, window_s=window_s,
                queries=queries, max_s=32.0, **connector)
    return ModelConfig(
        encoders=EncodersConfig(
            visual=VisualEncoderConfig(paths["visual"]), audio=AudioEncoderConfig(paths["audio"]),
            audio_events=AudioEventEncoderConfig(paths["audio_events"] if events else None)),
        connector=ConnectorConfig(**conn),
        llm=LLMConfig(paths["llm"], mode=mode, lora_r=4, lora_alpha=8, lora_dropout=0.0))


def replace(cfg, **kw):
    return dataclasses.replace(cfg, **kw)


def features(t: int = 7, a: int = 160, dv: int = 32, da: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, 17, dv, generator=g), torch.randn(a, da, generator=g)
