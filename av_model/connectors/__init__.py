"""Connectors: slot-aligned audio-visual features → LLM-space token embeddings."""

from av_model.connectors.base import Connector, ConnectorOutput
from av_model.connectors.qformer import CausalQFormer, QFormerConfig, QFormerLayer

__all__ = ["Connector", "ConnectorOutput", "CausalQFormer", "QFormerConfig", "QFormerLayer"]
