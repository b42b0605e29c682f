"""Build the configured connector for resolved feature sizes (one place maps config → class)."""

from __future__ import annotations

import math

from av_model.config import ConnectorConfig, FeatureDims, ModelConfig
from av_model.configlib import ConfigError
from av_model.connectors.base import Connector, OutputNorm
from av_model.connectors.linear import LinearConfig, LinearConnector
from av_model.connectors.mrc import MultiResQFormer
from av_model.connectors.qformer import QFormerConfig, WindowedQFormer
from av_model.sync import frames_per_slot


def qformer_config(c: ConnectorConfig, dims: FeatureDims, fps: float,
                   llm_dim: int) -> QFormerConfig:
    """Seconds → slots; positions per slot L = max(Nv, F) for concat, Nv + F for interleave
    (F = audio frames per slot)."""
    nv, f = dims.video_tokens, frames_per_slot(fps, dims.audio_rate)
    slot_tokens = nv + f if c.stream_fusion == "interleave" else max(nv, f)
    return QFormerConfig(
        video_dim=dims.video_dim, audio_dim=dims.audio_dim, slot_tokens=slot_tokens,
        llm_dim=llm_dim, hidden=c.hidden, heads=c.heads, layers=c.layers,
        window_slots=tuple(int(round(w * fps)) for w in c.window_s), queries=c.queries,
        max_slots=int(math.ceil(c.max_s * fps)), video_proj_dim=c.video_proj_dim,
        audio_proj_dim=c.audio_proj_dim, ffn_dim=c.ffn_dim, dropout=c.dropout,
        causal=c.uses_causal, causal_heads=c.causal_heads, causal_compat=c.causal_compat,
        diversity_weight=c.diversity_weight, stream_fusion=c.stream_fusion, video_tokens=nv,
        stream_queries=c.stream_queries)


def build_connector(cfg: ModelConfig, llm_dim: int, embed_rms: float = 1.0) -> Connector:
    """The connector for ``cfg``; ``embed_rms`` (the LLM's input-embedding RMS) starts the
    gain of ``output_norm: rms`` (a checkpoint's saved gain replaces it on load)."""
    connector = _build(cfg, llm_dim)
    if cfg.connector.output_norm == "rms":
        connector.out_norm = OutputNorm(llm_dim, embed_rms)
    return connector


def _build(cfg: ModelConfig, llm_dim: int) -> Connector:
    dims, c = cfg.dims, cfg.connector
    if not dims.resolved:
        raise ConfigError("dims", "feature sizes are unresolved; fill them from the encoders "
                          "(av_model.encoders.feature_dims) or the feature shards")
    if c.kind == "linear":
        # Only "all" and "cls" keep the tower's [CLS] token at position 0.
        has_cls = c.visual_cls and cfg.encoders.visual.token_mode in ("all", "cls")
        return LinearConnector(LinearConfig(dims.video_dim, dims.audio_dim, dims.video_tokens,
                                            llm_dim, visual_cls=has_cls))
    try:
        qcfg = qformer_config(c, dims, cfg.encoders.fps, llm_dim)
        return MultiResQFormer(qcfg) if c.kind == "mrc_qformer" else WindowedQFormer(qcfg)
    except ConfigError as err:
        field = {"window_slots": "window_s", "max_slots": "max_s"}.get(err.field, err.field)
        raise ConfigError(f"connector.{field}", str(err).split(": ", 1)[1]) from None
