"""Frozen audio encoders: Whisper (speech, 50 Hz) and an optional AST audio-event encoder.

No silent truncation: the released FAVOR/video-SALMONN code feeds Whisper one 30 s window
and drops the rest. Here every waveform is cut into windows of the model's context length,
all windows of a batch run through the encoder together, and each window keeps only the
frames that cover real audio, so the output length is ``ceil(samples / samples_per_frame)``
whatever the clip length (50 Hz for Whisper: 320 samples per frame at 16 kHz).
"""

from __future__ import annotations

import abc
import math

import numpy as np
import torch
from transformers import (ASTFeatureExtractor, ASTModel, AutoConfig, WhisperFeatureExtractor,
                          WhisperModel)

from av_model.config import AudioEncoderConfig, AudioEventEncoderConfig
from av_model.encoders.common import FrozenEncoder, default_device, freeze, torch_dtype

SAMPLE_RATE = 16000
_MIN_FBANK_SAMPLES = 400  # one 25 ms analysis frame at 16 kHz


def whisper_frame_rate(name_or_path: str) -> float:
    """Encoder frames per second, from the feature-extractor config alone (no weights)."""
    extractor = WhisperFeatureExtractor.from_pretrained(name_or_path)
    return extractor.sampling_rate / (extractor.hop_length * 2)  # conv2 has stride 2


def events_frame_rate(name_or_path: str) -> float:
    """Audio-event tokens per second (AST after frequency pooling, or CLAP), from configs."""
    from av_model.encoders.clap import clap_frame_rate, is_clap

    if is_clap(name_or_path):
        return clap_frame_rate(name_or_path)
    return 100.0 / AutoConfig.from_pretrained(name_or_path).time_stride  # 10 ms fbank hop


def _split(wave: np.ndarray, window: int) -> list[np.ndarray]:
    """Cut a 1-D waveform into windows of ``window`` samples (the last one may be short)."""
    return [wave[i:i + window] for i in range(0, max(len(wave), 1), window)]


class _ChunkedAudioEncoder(FrozenEncoder, abc.ABC):
    """Shared chunk → batch → trim → concatenate logic for fixed-context audio towers."""

    window_samples: int      # samples per model context window
    samples_per_frame: int   # output frame hop in samples
    chunks_per_forward: int

    @abc.abstractmethod
    def _encode_windows(self, windows: list[np.ndarray]) -> torch.Tensor:
        """list of ≤ window-length waveforms → (W, frames_per_window, D)."""

    @property
    def frame_rate(self) -> float:
        return SAMPLE_RATE / self.samples_per_frame

    def num_frames(self, num_samples: int) -> int:
        return math.ceil(num_samples / self.samples_per_frame)

    @torch.no_grad()
    def encode(self, waveforms: list[np.ndarray]) -> list[np.ndarray]:
        """16 kHz mono float waveforms of any length → one (A_i, D) float32 array each."""
        windows, owners = [], []
        for i, wave in enumerate(waveforms):
            for w in _split(np.asarray(wave, np.float32), self.window_samples):
                windows.append(w)
                owners.append(i)
        pieces: list[list[np.ndarray]] = [[] for _ in waveforms]
        step = self.chunks_per_forward
        for start in range(0, len(windows), step):
            batch = windows[start:start + step]
            feats = self._encode_windows(batch).float().cpu().numpy()  # (w, F, D)
            for j, w in enumerate(batch):
                keep = self.num_frames(len(w))
                pieces[owners[start + j]].append(feats[j, :keep])
        return [np.concatenate(p, axis=0) if len(w) else p[0][:0]
                for p, w in zip(pieces, waveforms)]


class WhisperAudioEncoder(_ChunkedAudioEncoder):
    """The encoder half of a Whisper checkpoint; the decoder is dropped after loading."""

    def __init__(self, cfg: AudioEncoderConfig, device: str | torch.device | None = None):
        super().__init__()
        self.cfg = cfg
        self.extractor = WhisperFeatureExtractor.from_pretrained(cfg.name_or_path)
        whisper = WhisperModel.from_pretrained(cfg.name_or_path, dtype=torch_dtype(cfg.dtype))
        self.encoder = freeze(whisper.get_encoder())
        del whisper
        conv_stride = self.encoder.conv1.stride[0] * self.encoder.conv2.stride[0]
        mel_frames = self.encoder.config.max_source_positions * conv_stride
        self.samples_per_frame = self.extractor.hop_length * conv_stride  # 320 → 50 Hz
        self.window_samples = mel_frames * self.extractor.hop_length      # 480000 → 30 s
        self.chunks_per_forward = cfg.chunks_per_forward
        self.to(device or default_device())

    @property
    def hidden_size(self) -> int:
        return int(self.encoder.config.d_model)

    def _encode_windows(self, windows: list[np.ndarray]) -> torch.Tensor:
        mel = self.extractor(windows, sampling_rate=SAMPLE_RATE, return_tensors="pt",
                             padding="max_length", max_length=self.window_samples,
                             truncation=True).input_features  # (w, n_mels, mel_frames)
        mel = mel.to(self.device, self.dtype)
        return self.encoder(input_features=mel).last_hidden_state  # (w, mel_frames/2, D)


class AudioEventEncoder(_ChunkedAudioEncoder):
    """An Audio Spectrogram Transformer pooled over frequency: one token per time patch.

    AST's patch grid is (frequency × time) in frequency-major order; averaging over the
    frequency axis keeps a time-resolved sequence (10 Hz with the released 10 ms hop and
    time stride 10) that the sync module can align with video frames, like BEATs tokens.
    """

    def __init__(self, cfg: AudioEventEncoderConfig, device: str | torch.device | None = None):
        super().__init__()
        if not cfg.name_or_path:
            raise ValueError("AudioEventEncoder needs audio_events.name_or_path")
        self.cfg = cfg
        hf = AutoConfig.from_pretrained(cfg.name_or_path)
        self.extractor = ASTFeatureExtractor.from_pretrained(cfg.name_or_path)
        self.model = freeze(ASTModel.from_pretrained(cfg.name_or_path,
                                                     dtype=torch_dtype(cfg.dtype)))
        self.freq_patches = (hf.num_mel_bins - hf.patch_size) // hf.frequency_stride + 1
        self.time_patches = (hf.max_length - hf.patch_size) // hf.time_stride + 1
        hop = SAMPLE_RATE // 100  # the extractor's Kaldi fbank uses a 10 ms shift
        self.samples_per_frame = hf.time_stride * hop
        # A window holds exactly `time_patches` output steps (the last patch needs a full
        # patch_size of fbank frames), so windows tile the waveform without gaps.
        self.window_samples = self.time_patches * self.samples_per_frame
        self.chunks_per_forward = cfg.chunks_per_forward
        self.to(device or default_device())

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def _encode_windows(self, windows: list[np.ndarray]) -> torch.Tensor:
        # The Kaldi fbank needs one full 25 ms frame; pad shorter tails with silence (the
        # caller keeps only ceil(len / hop) outputs, so padding adds no frames).
        windows = [np.pad(w, (0, max(0, _MIN_FBANK_SAMPLES - len(w)))) for w in windows]
        feats = self.extractor(windows, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        x = feats.input_values.to(self.device, self.dtype)  # (w, max_length, n_mels)
        hidden = self.model(input_values=x).last_hidden_state[:, 2:]  # drop cls + distill
        w, _, d = hidden.shape
        grid = hidden.reshape(w, self.freq_patches, self.time_patches, d)  # (w, f, t, D)
        return grid.mean(dim=1)  # (w, t, D)
