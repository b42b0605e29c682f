"""Typed model configs (frozen dataclasses) and named presets.

Every field is documented where it is declared; ``__post_init__`` validates with
``configlib.check`` so a bad value fails before any work starts, naming the field.
Load from YAML with ``configlib.load_config(EncodersConfig, path, ["visual.layer=-1"])``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from av_model.configlib import check

DTypeName = Literal["float32", "bfloat16", "float16"]
TokenMode = Literal["all", "cls", "patches", "pooled"]


@dataclass(frozen=True)
class VisualEncoderConfig:
    """A frozen Hugging Face vision tower applied to every sampled frame."""

    # Hub name or local directory (CLIP, SigLIP, BLIP-2/InstructBLIP vision, or any AutoModel
    # whose forward takes pixel_values and returns last_hidden_state).
    name_or_path: str = "openai/clip-vit-base-patch16"
    # Which hidden layer to read: -1 is the last, -2 the penultimate (LLaVA-style).
    layer: int = -1
    # all = [CLS] + patches, cls = [CLS] only, patches = patches only,
    # pooled = patch grid average-pooled to `pooled_tokens` (a square number) tokens.
    token_mode: TokenMode = "all"
    pooled_tokens: int = 4
    dtype: DTypeName = "float32"
    # Frames per forward pass; bounds activation memory independent of clip length.
    frames_per_forward: int = 64

    def __post_init__(self) -> None:
        check(bool(self.name_or_path), "name_or_path", "must name a model")
        root = int(round(self.pooled_tokens ** 0.5))
        check(root * root == self.pooled_tokens and root > 0, "pooled_tokens",
              f"must be a positive square number, got {self.pooled_tokens}")
        check(self.frames_per_forward > 0, "frames_per_forward", "must be > 0")


@dataclass(frozen=True)
class AudioEncoderConfig:
    """The frozen Whisper encoder: speech (and sound) features at 50 Hz."""

    name_or_path: str = "openai/whisper-small"
    dtype: DTypeName = "float32"
    # Whisper windows per forward pass (each is the model's 30 s context).
    chunks_per_forward: int = 8

    def __post_init__(self) -> None:
        check(bool(self.name_or_path), "name_or_path", "must name a model")
        check(self.chunks_per_forward > 0, "chunks_per_forward", "must be > 0")


@dataclass(frozen=True)
class AudioEventEncoderConfig:
    """Optional frozen audio-event encoder (AST-style), time-resolved tokens (~10 Hz).

    video-SALMONN pairs Whisper with BEATs; BEATs has no transformers port, so we use the
    Audio Spectrogram Transformer, pooled over frequency to keep one token per time step.
    """

    # None disables the encoder; e.g. "MIT/ast-finetuned-audioset-10-10-0.4593".
    name_or_path: str | None = None
    dtype: DTypeName = "float32"
    chunks_per_forward: int = 8

    def __post_init__(self) -> None:
        check(self.chunks_per_forward > 0, "chunks_per_forward", "must be > 0")


@dataclass(frozen=True)
class EncodersConfig:
    """The frozen encoders and the sampling they share across ingest, serving and eval."""

    visual: VisualEncoderConfig = field(default_factory=VisualEncoderConfig)
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    audio_events: AudioEventEncoderConfig = field(default_factory=AudioEventEncoderConfig)
    # Visual frames per second of video (FAVOR/video-SALMONN use 2).
    fps: float = 2.0
    # How frames reach the tower's square input: squash = resize ignoring aspect ratio,
    # crop = short side to the input size, then centre crop (CLIP's own preprocessing).
    resize: Literal["squash", "crop"] = "squash"
    # Audio is decoded to mono at this rate (Whisper's).
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        check(self.fps > 0, "fps", "must be > 0")
        check(self.sample_rate == 16000, "sample_rate",
              "Whisper and AST expect 16000 Hz audio")


ENCODER_PRESETS: dict[str, EncodersConfig] = {
    # Single-GPU scale: CLIP ViT-B/16 + whisper-small.
    "clip-b16-whisper-small": EncodersConfig(
        visual=VisualEncoderConfig("openai/clip-vit-base-patch16", layer=-2),
        audio=AudioEncoderConfig("openai/whisper-small")),
    # Audio-Visual LLM scale: CLIP ViT-L/14 + Whisper large-v2.
    "clip-l14-whisper-large-v2": EncodersConfig(
        visual=VisualEncoderConfig("openai/clip-vit-large-patch14", layer=-2),
        audio=AudioEncoderConfig("openai/whisper-large-v2")),
    # video-SALMONN-style: adds an audio-event encoder.
    "clip-l14-whisper-large-v2-ast": EncodersConfig(
        visual=VisualEncoderConfig("openai/clip-vit-large-patch14", layer=-2),
        audio=AudioEncoderConfig("openai/whisper-large-v2"),
        audio_events=AudioEventEncoderConfig("MIT/ast-finetuned-audioset-10-10-0.4593")),
}
