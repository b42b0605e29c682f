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


class Connector(nn.Module, abc.ABC):
    """Abstract base: subclasses implement ``forward`` and ``tokens_for``."""

    @abc.abstractmethod
    def forward(self, batch: SyncedBatch) -> ConnectorOutput:
        """Slot-aligned features → (B, N, D_llm) embeddings, lengths and auxiliary loss."""

    @abc.abstractmethod
    def tokens_for(self, num_slots: int) -> int:
        """LLM tokens a sample with ``num_slots`` slots gets (must equal its ``lengths``)."""
