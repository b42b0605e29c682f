"""Connectors: slot-aligned audio-visual features → LLM-space token embeddings."""

from av_model.connectors.base import Connector, ConnectorOutput
from av_model.connectors.linear import LinearConfig, LinearConnector
from av_model.connectors.mrc import MultiResQFormer
from av_model.connectors.qformer import QFormerConfig, QFormerLayer, WindowedQFormer

__all__ = ["Connector", "ConnectorOutput", "LinearConfig", "LinearConnector",
           "MultiResQFormer", "QFormerConfig", "QFormerLayer", "WindowedQFormer"]
