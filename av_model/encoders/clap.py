"""CLAP's audio tower (HTSAT) as a time-resolved audio-event encoder (Audio-Visual LLM).

Why time-resolved: CLAP is usually read as one pooled vector per 10 s, which cannot be
aligned with video frames. HTSAT's last feature map is (channels, frequency bins, time); its
time axis is folded into frequency groups in time order, so averaging over frequency keeps
``tokens_per_window`` steps per window (32 per 10 s = 3.2 Hz for the released models), which
the sync module aligns like any other audio stream.

CLAP wants 48 kHz audio: each 16 kHz window is resampled with a polyphase filter (scipy), and
zero-padded (never repeat-padded, which would invent sound) to the model's window length.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.signal import resample_poly
from transformers import AutoConfig, ClapAudioModel, ClapFeatureExtractor

from av_model.config import AudioEventEncoderConfig
from av_model.encoders.audio import SAMPLE_RATE, _ChunkedAudioEncoder
from av_model.encoders.common import (default_device, freeze, read_prefixed, strip_prefix,
                                     torch_dtype)


def _audio_config(name_or_path: str):
    hf = AutoConfig.from_pretrained(name_or_path)
    return getattr(hf, "audio_config", hf)


def clap_geometry(name_or_path: str) -> tuple[int, int, int]:
    """(window samples at 16 kHz, output tokens per window, channels), from configs only."""
    ac = _audio_config(name_or_path)
    extractor = ClapFeatureExtractor.from_pretrained(name_or_path)
    levels = len(ac.depths) - 1
    n_temp = ac.spec_size // 2 ** levels // ac.patch_stride[1]
    tokens = n_temp * (ac.spec_size // ac.num_mel_bins)               # x freq_ratio groups
    channels = int(ac.patch_embeds_hidden_size * 2 ** levels)
    return int(extractor.max_length_s * SAMPLE_RATE), tokens, channels


def clap_frame_rate(name_or_path: str) -> float:
    window, tokens, _ = clap_geometry(name_or_path)
    return tokens * SAMPLE_RATE / window


def is_clap(name_or_path: str) -> bool:
    return AutoConfig.from_pretrained(name_or_path).model_type in ("clap", "clap_audio_model")


def _load_audio_tower(name_or_path: str, dtype: torch.dtype) -> ClapAudioModel:
    """The HTSAT tower alone, also from a whole CLAP checkpoint (audio_model.* tensors)."""
    if AutoConfig.from_pretrained(name_or_path).model_type == "clap_audio_model":
        return ClapAudioModel.from_pretrained(name_or_path, dtype=dtype)
    tower = ClapAudioModel(_audio_config(name_or_path))
    state = strip_prefix(read_prefixed(name_or_path, ("audio_model.",)), "audio_model.")
    result = tower.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise ValueError(f"{name_or_path}: CLAP audio tensors missing: {result.missing_keys[:5]}")
    return tower.to(dtype)


class ClapEventEncoder(_ChunkedAudioEncoder):
    """HTSAT over fixed windows → (A, C) tokens at ``tokens_per_window / window_s`` Hz."""

    def __init__(self, cfg: AudioEventEncoderConfig, device: str | torch.device | None = None):
        super().__init__()
        self.cfg = cfg
        self.extractor = ClapFeatureExtractor.from_pretrained(cfg.name_or_path)
        self.model = freeze(_load_audio_tower(cfg.name_or_path, torch_dtype(cfg.dtype)))
        self.window_samples, tokens, self.channels = clap_geometry(cfg.name_or_path)
        if self.window_samples % tokens:
            raise ValueError(f"CLAP window of {self.window_samples} samples does not split into "
                             f"{tokens} tokens")
        self.samples_per_frame = self.window_samples // tokens
        self.chunks_per_forward = cfg.chunks_per_forward
        self.to(device or default_device())

    @property
    def hidden_size(self) -> int:
        return self.channels

    def _encode_windows(self, windows: list[np.ndarray]) -> torch.Tensor:
        rate = self.extractor.sampling_rate
        up = [resample_poly(w, rate, SAMPLE_RATE).astype(np.float32) for w in windows]
        feats = self.extractor(up, sampling_rate=rate, return_tensors="pt",
                               truncation="rand_trunc", padding="pad")  # window ≤ max: no crop
        x = feats.input_features.to(self.device, self.dtype)
        hidden = self.model(input_features=x).last_hidden_state     # (w, C, freq bins, T)
        return hidden.mean(dim=2).transpose(1, 2)                    # (w, T, C)
