"""One connector interface: slot-aligned features in, LLM-space token embeddings out.

Why an interface: the linear, Q-Former, causal Q-Former and multi-resolution connectors are
swapped by config, and the processor must know how many placeholder positions to expand for
a clip before the connector runs (``tokens_for``), so every connector answers both questions.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import nn

from av_model.sync import SyncedBatch

Tensor = torch.Tensor


@dataclass
class ConnectorOutput:
    """What every connector returns; real tokens of sample i are ``embeds[i, :lengths[i]]``."""

    embeds: Tensor    # (B, N, D_llm): padded with zeros after lengths[i]
    lengths: Tensor   # (B,) long: real tokens per sample
    aux_loss: Tensor  # () scalar auxiliary loss (e.g. diversity); 0 when unused


class OutputNorm(nn.Module):
    """RMS-normalise each output token, then a learned per-dim gain that starts at the LLM's
    input-embedding RMS.

    Why: a freshly initialised projection emits tokens tens of times larger than text
    embeddings (a Q-Former's LayerNormed output through ``nn.Linear``: std ~1 against 0.02
    for the tiny LLM's table), and a small LLM then learns to read the media tokens slowly or
    not at all (benchmarks/RESULTS.md, bench-model). Padding (all-zero) tokens stay zero.
    """

    def __init__(self, dim: int, init_rms: float, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.RMSNorm(dim, eps=eps)
        with torch.no_grad():
            self.norm.weight.fill_(init_rms)

    def forward(self, embeds: Tensor) -> Tensor:
        return self.norm(embeds)                                     # (B, N, D)


class Connector(nn.Module, abc.ABC):
    """Abstract base: subclasses implement ``forward`` and ``tokens_for``, and pass their
    embeddings through ``finish`` (the optional ``OutputNorm`` the factory attaches)."""

    def __init__(self) -> None:
        super().__init__()
        self.out_norm: OutputNorm | None = None

    def finish(self, embeds: Tensor) -> Tensor:
        """Embeddings (B, N, D) as the LLM gets them: normalised when configured."""
        return embeds if self.out_norm is None else self.out_norm(embeds)

    @abc.abstractmethod
    def forward(self, batch: SyncedBatch) -> ConnectorOutput:
        """Slot-aligned features → (B, N, D_llm) embeddings, lengths and auxiliary loss."""

    @abc.abstractmethod
    def tokens_for(self, num_slots: int) -> int:
        """LLM tokens a sample with ``num_slots`` slots gets (must equal its ``lengths``)."""
