"""All frozen encoders of a model behind one call: decoded media → feature tensors.

Why a bundle: serving and evaluation turn raw media into exactly the features ingest stored
(same classes, same order, same audio-stream join), and training must be able to build the
connector from the encoder identities without loading any weights (``feature_dims``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig

from av_model.config import AudioEventEncoderConfig, EncodersConfig, FeatureDims
from av_model.encoders.audio import AudioEventEncoder, WhisperAudioEncoder, whisper_frame_rate
from av_model.encoders.clap import ClapEventEncoder, clap_geometry, is_clap
from av_model.encoders.visual import VisualEncoder, visual_dims

Tensor = torch.Tensor


def event_encoder(cfg: AudioEventEncoderConfig, device: str | torch.device | None = None):
    """AST or CLAP, by the checkpoint's model type."""
    if is_clap(cfg.name_or_path):
        return ClapEventEncoder(cfg, device)
    return AudioEventEncoder(cfg, device)


def _events_dim(name_or_path: str) -> int:
    if is_clap(name_or_path):
        return clap_geometry(name_or_path)[2]
    return int(AutoConfig.from_pretrained(name_or_path).hidden_size)


def feature_dims(cfg: EncodersConfig) -> FeatureDims:
    """Connector input sizes from the encoders' config files (no weights loaded)."""
    nv, dv = visual_dims(cfg.visual)
    da = int(AutoConfig.from_pretrained(cfg.audio.name_or_path).d_model)
    if cfg.audio_events.name_or_path:
        da += _events_dim(cfg.audio_events.name_or_path)
    return FeatureDims(video_dim=dv, video_tokens=nv, audio_dim=da,
                       audio_rate=whisper_frame_rate(cfg.audio.name_or_path))


def join_audio(audio: Tensor, events: Tensor | None) -> Tensor:
    """Whisper frames (A, Dw) ‖ audio-event tokens (E, De) upsampled to the Whisper rate.

    Events come at a lower rate (AST: 10 Hz, CLAP: 3.2 Hz, vs 50 Hz): Whisper frame j takes
    the event token covering the same fraction of the clip (index ``j * E // A``), so the
    streams line up frame for frame whatever the ratio (video-SALMONN concatenates Whisper
    and BEATs the same way).
    """
    if events is None:
        return audio
    a, e = audio.shape[0], events.shape[0]
    if e == 0:
        return torch.cat([audio, audio.new_zeros(a, events.shape[1])], dim=-1)
    index = torch.arange(a, device=events.device) * e // max(a, 1)       # (A,)
    up = events.to(audio.dtype)[index]                                   # (A, De)
    return torch.cat([audio, up], dim=-1)                                # (A, Dw + De)


class AVEncoders(nn.Module):
    """Visual tower + Whisper (+ audio events), frozen; ``encode`` mirrors ingest exactly."""

    def __init__(self, cfg: EncodersConfig, device: str | torch.device | None = None):
        super().__init__()
        self.cfg = cfg
        self.visual = VisualEncoder(cfg.visual, device)
        self.audio = WhisperAudioEncoder(cfg.audio, device)
        self.events = event_encoder(cfg.audio_events, device) \
            if cfg.audio_events.name_or_path else None

    def dims(self) -> FeatureDims:
        """The sizes these loaded encoders produce (checked against a model's config)."""
        da = self.audio.hidden_size + (self.events.hidden_size if self.events else 0)
        return FeatureDims(video_dim=self.visual.hidden_size,
                           video_tokens=self.visual.num_tokens, audio_dim=da,
                           audio_rate=self.audio.frame_rate)

    @torch.no_grad()
    def encode(self, frames: np.ndarray | None,
               waveform: np.ndarray | None) -> tuple[Tensor | None, Tensor | None]:
        """(T, S, S, 3) uint8 frames, 16 kHz mono float waveform → video, joined audio."""
        video = None if frames is None or len(frames) == 0 else \
            torch.from_numpy(self.visual.encode(frames))
        audio = None
        if waveform is not None and len(waveform) > 0:
            audio = torch.from_numpy(self.audio.encode([waveform])[0])
            events = torch.from_numpy(self.events.encode([waveform])[0]) if self.events else None
            audio = join_audio(audio, events)
        return video, audio
