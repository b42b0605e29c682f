"""Linear projector connector (Audio-Visual LLM).

Why so simple: the Audio-Visual LLM paper shows per-modality linear projections are a strong
baseline when the LLM itself is tuned. From slot-aligned features it builds

- spatial tokens: each visual position (bar [CLS]) averaged over the clip's frames (P tokens);
- temporal tokens: one per slot, that frame's [CLS] token (or its mean token without [CLS]);
- audio segment tokens: one per slot, the mean of that slot's audio frames;

each through its own linear projector. Layout per sample: ``[spatial P | (temporal_k,
audio_k) for each slot k]`` so time order is kept and padding falls at the end. A token whose
modality is absent (no frame or no audio in that slot) is zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from av_model.configlib import check
from av_model.connectors.base import Connector, ConnectorOutput
from av_model.sync import SyncedBatch

Tensor = torch.Tensor


@dataclass(frozen=True)
class LinearConfig:
    video_dim: int
    audio_dim: int
    video_tokens: int        # Nv: visual tokens per frame
    llm_dim: int
    visual_cls: bool = True  # position 0 of a frame's tokens is the [CLS] token

    def __post_init__(self) -> None:
        for name in ("video_dim", "audio_dim", "video_tokens", "llm_dim"):
            check(getattr(self, name) > 0, name, "must be > 0")

    @property
    def spatial_tokens(self) -> int:
        return self.video_tokens - (1 if self.visual_cls else 0)


def _masked_mean(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Mean of x over ``dim`` where mask is True; zero where nothing is masked in."""
    m = mask[..., None].to(x.dtype)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1)


class LinearConnector(Connector):
    def __init__(self, cfg: LinearConfig):
        super().__init__()
        self.cfg = cfg
        self.temporal = nn.Linear(cfg.video_dim, cfg.llm_dim)
        self.spatial = nn.Linear(cfg.video_dim, cfg.llm_dim)
        self.audio = nn.Linear(cfg.audio_dim, cfg.llm_dim)

    def tokens_for(self, num_slots: int) -> int:
        return self.cfg.spatial_tokens + 2 * num_slots

    def forward(self, batch: SyncedBatch) -> ConnectorOutput:
        """1. split streams  2. pool  3. project, zero absent  4. lay out per sample."""
        cfg = self.cfg
        nv, dv = cfg.video_tokens, cfg.video_dim
        vid = batch.features[:, :, :nv, :dv]                         # (B, S, Nv, Dv)
        vmask = batch.video_mask[:, :, :nv] & batch.slot_mask[..., None]  # (B, S, Nv)
        has_frame = vmask.any(-1)                                    # (B, S)
        if cfg.visual_cls:
            frame_tok, patch, pmask = vid[:, :, 0], vid[:, :, 1:], vmask[:, :, 1:]
        else:
            frame_tok, patch, pmask = _masked_mean(vid, vmask, 2), vid, vmask
        temporal = self.temporal(frame_tok) * has_frame[..., None]   # (B, S, D)
        spatial = self.spatial(_masked_mean(patch, pmask, 1))        # (B, P, D)
        spatial = spatial * pmask.any(1)[..., None]
        amask = batch.audio_mask & batch.slot_mask[..., None]        # (B, S, L)
        audio = self.audio(_masked_mean(batch.features[..., dv:], amask, 2))  # (B, S, D)
        audio = audio * amask.any(-1)[..., None]
        b, s, d = temporal.shape
        per_slot = torch.stack([temporal, audio], dim=2).reshape(b, 2 * s, d)  # (B, S, 2, D) -> (B, 2S, D)
        embeds = torch.cat([spatial, per_slot], dim=1)               # (B, P + 2S, D)
        lengths = cfg.spatial_tokens + 2 * batch.num_slots.to(embeds.device)
        return ConnectorOutput(self.finish(embeds), lengths, embeds.new_zeros(()))
