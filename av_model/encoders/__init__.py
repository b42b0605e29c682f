"""Frozen encoders shared by ingest, serving and evaluation (same code → same features)."""

from av_model.encoders.audio import (AudioEventEncoder, WhisperAudioEncoder, events_frame_rate,
                                     whisper_frame_rate)
from av_model.encoders.bundle import AVEncoders, feature_dims, join_audio
from av_model.encoders.visual import VisualEncoder, VisualInputSpec, visual_dims, visual_input_spec

__all__ = ["AVEncoders", "AudioEventEncoder", "feature_dims", "join_audio", "visual_dims", "VisualEncoder", "VisualInputSpec", "WhisperAudioEncoder",
           "events_frame_rate", "whisper_frame_rate",
           "visual_input_spec"]
