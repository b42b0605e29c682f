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
TokenMode = Literal["all", "cls", "patches", "pooled", "qformer"]


@dataclass(frozen=True)
class VisualEncoderConfig:
    """A frozen Hugging Face vision tower applied to every sampled frame."""

    # Hub name or local directory (CLIP, SigLIP, BLIP-2/InstructBLIP vision, or any AutoModel
    # whose forward takes pixel_values and returns last_hidden_state).
    name_or_path: str = "openai/clip-vit-base-patch16"
    # Which hidden layer to read: -1 is the last, -2 the penultimate (LLaVA-style).
    layer: int = -1
    # all = [CLS] + patches, cls = [CLS] only, patches = patches only,
    # pooled = patch grid average-pooled to `pooled_tokens` (a square number) tokens,
    # qformer = the checkpoint's own frozen Q-Former queries (BLIP-2 / InstructBLIP; FAVOR);
    # `layer` is then unused (BLIP reads the tower's final output).
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
    """Optional frozen audio-event encoder with time-resolved tokens: AST (~10 Hz) or CLAP.

    video-SALMONN pairs Whisper with BEATs; BEATs has no transformers port, so we use the
    Audio Spectrogram Transformer, pooled over frequency to keep one token per time step.
    Audio-Visual LLM uses CLAP's HTSAT tower (3.2 Hz after frequency pooling).
    """

    # None disables the encoder; e.g. "MIT/ast-finetuned-audioset-10-10-0.4593" or
    # "laion/clap-htsat-unfused" (the model type picks the class).
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


# ----------------------------------------------------------------------------- the av-LLM

ConnectorKind = Literal["linear", "qformer", "causal_qformer", "mrc_qformer"]


@dataclass(frozen=True)
class ConnectorConfig:
    """Which connector maps slot-aligned features to LLM tokens, and its sizes."""

    # linear (Audio-Visual LLM), qformer (one clip-level window, Video-LLaMA-style),
    # causal_qformer (FAVOR), mrc_qformer (video-SALMONN multi-resolution).
    kind: ConnectorKind = "causal_qformer"
    hidden: int = 768             # Q-Former width (BERT-base in the papers)
    heads: int = 12
    layers: int = 2
    ffn_dim: int = 3072
    # One entry per resolution: window length in seconds (a whole number of frame slots;
    # stride = window) and learned queries per window. qformer uses one window over the clip.
    window_s: tuple[float, ...] = (5.0,)
    queries: tuple[int, ...] = (32,)
    max_s: float = 128.0          # longest clip a clip-level window must hold
    # Per-modality projections before concatenation (0 = none); the released models map
    # Whisper-large's 1280 dims to 768.
    video_proj_dim: int = 0
    audio_proj_dim: int = 0
    # FAVOR causal attention module; null = by kind (on for causal_qformer and mrc_qformer,
    # off for the clip-level qformer, where it would attend over every token of the clip).
    causal: bool | None = None
    causal_heads: int = 12
    causal_compat: bool = False   # reproduce the released code's mask (see qformer.py)
    dropout: float = 0.0
    diversity_weight: float = 0.0  # video-SALMONN diversity loss weight λ (0 = off)
    # Q-Formers: how a slot's frame and audio meet. concat (FAVOR, video-SALMONN, needed for
    # their weights): visual token p and audio frame p share a position, on the feature dim.
    # interleave: the slot's visual tokens, then its audio frames, each a position of its
    # own (the other stream's dims zero); the causal mask is still per slot. See
    # benchmarks/RESULTS.md (bench-model) for why.
    stream_fusion: Literal["concat", "interleave"] = "concat"
    # interleave only: half of each window's queries read the visual positions, half the
    # audio ones, so neither stream can take every query (the causal module still fuses them).
    stream_queries: bool = False
    # linear: the first visual token of a frame is [CLS] (only with token_mode all or cls;
    # set false for towers without one, e.g. SigLIP).
    visual_cls: bool = True
    # rms: RMS-normalise every output token, with a learned gain that starts at the LLM's
    # input-embedding RMS, so media tokens start at the scale of text tokens (see
    # connectors/base.py OutputNorm). none: the raw projection, as the released FAVOR /
    # video-SALMONN / Audio-Visual LLM weights expect.
    output_norm: Literal["none", "rms"] = "none"

    @property
    def uses_causal(self) -> bool:
        return self.causal if self.causal is not None else self.kind != "qformer"

    def __post_init__(self) -> None:
        for name in ("hidden", "heads", "layers", "ffn_dim", "causal_heads"):
            check(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        check(len(self.window_s) == len(self.queries) and len(self.queries) > 0, "queries",
              f"needs one entry per window_s entry, got {self.queries} for {self.window_s}")
        check(self.max_s > 0, "max_s", "must be > 0")
        check(not self.stream_queries or self.stream_fusion == "interleave", "stream_queries",
              "needs stream_fusion: interleave (each position then holds one stream)")
        check(not self.stream_queries or all(q % 2 == 0 for q in self.queries), "queries",
              f"stream_queries gives half of each window's queries to each stream: "
              f"need even counts, got {self.queries}")
        if self.kind == "qformer":
            check(self.window_s == (0.0,), "window_s",
                  "qformer is clip-level: use window_s: [0] (or causal_qformer for windows)")
        elif self.kind == "causal_qformer":
            check(len(self.window_s) == 1 and self.window_s[0] > 0, "window_s",
                  "causal_qformer takes one window length > 0 (mrc_qformer for several)")
        elif self.kind == "mrc_qformer":
            check(len(self.window_s) >= 2 and min(self.window_s) > 0, "window_s",
                  "mrc_qformer needs two or more window lengths > 0")


@dataclass(frozen=True)
class LLMConfig:
    """Any Hugging Face causal LM and how it trains."""

    name_or_path: str = "Qwen/Qwen2.5-0.5B-Instruct"
    mode: Literal["frozen", "lora", "full"] = "lora"
    dtype: DTypeName = "float32"
    lora_r: int = 32
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    gradient_checkpointing: bool = False
    # auto = the tokenizer's own chat template when it has one, else Vicuna's.
    template: Literal["auto", "vicuna"] = "auto"
    system_prompt: str = ("A chat between a curious user and an artificial intelligence "
                          "assistant. The assistant gives helpful, detailed, and polite "
                          "answers to the user's questions.")
    max_length: int = 2048        # prompt + answer tokens (media tokens included)

    def __post_init__(self) -> None:
        check(bool(self.name_or_path), "name_or_path", "must name a model")
        check(self.lora_r > 0 and self.lora_alpha > 0, "lora_r", "must be > 0")
        check(0.0 <= self.lora_dropout < 1.0, "lora_dropout", "must be in [0, 1)")
        check(bool(self.lora_targets), "lora_targets", "must name at least one module")
        check(self.max_length > 0, "max_length", "must be > 0")


@dataclass(frozen=True)
class FeatureDims:
    """Feature sizes the connector is built for; 0 = read from the encoder configs.

    Presets state them (facts about the named checkpoints), so training builds the connector
    without fetching anything; loading the encoders checks them.
    """

    video_dim: int = 0       # Dv
    video_tokens: int = 0    # Nv per frame
    audio_dim: int = 0       # Da: Whisper width (+ audio-event width when enabled)
    audio_rate: float = 0.0  # audio frames per second (Whisper: 50)

    @property
    def resolved(self) -> bool:
        return min(self.video_dim, self.video_tokens, self.audio_dim) > 0 and self.audio_rate > 0


@dataclass(frozen=True)
class ModelConfig:
    """The whole av-LLM: encoders, connector, LLM. Saved as ``avray.yaml`` in checkpoints."""

    encoders: EncodersConfig = field(default_factory=EncodersConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    dims: FeatureDims = field(default_factory=FeatureDims)

    def __post_init__(self) -> None:
        slot = 1.0 / self.encoders.fps
        for w in self.connector.window_s:
            slots = w / slot
            check(abs(slots - round(slots)) < 1e-6, "connector.window_s",
                  f"{w} s is not a whole number of {slot:g} s frame slots at "
                  f"fps={self.encoders.fps}")


_VICUNA13B = LLMConfig("lmsys/vicuna-13b-v1.5", dtype="bfloat16", template="vicuna",
                       gradient_checkpointing=True)
_EVA_INSTRUCTBLIP = VisualEncoderConfig("Salesforce/instructblip-vicuna-13b",
                                        token_mode="qformer", dtype="bfloat16")

MODEL_PRESETS: dict[str, ModelConfig] = {
    # FAVOR: InstructBLIP (EVA-CLIP + its Q-Former, 32 tokens per frame), Whisper-large-v2,
    # Vicuna-13B; causal Q-Former, 2 layers, 32 queries per 5 s window -> 6.4 tokens/s.
    "favor-vicuna13b": ModelConfig(
        encoders=EncodersConfig(visual=_EVA_INSTRUCTBLIP,
                                audio=AudioEncoderConfig("openai/whisper-large-v2",
                                                         dtype="bfloat16")),
        connector=ConnectorConfig("causal_qformer", window_s=(5.0,), queries=(32,),
                                  audio_proj_dim=768),
        llm=_VICUNA13B,
        dims=FeatureDims(video_dim=768, video_tokens=32, audio_dim=1280, audio_rate=50.0)),
    # video-SALMONN: adds an audio-event encoder; MRC with 5 s/30 queries and 0.5 s/3
    # queries (6 tokens/s each), diversity loss on.
    "salmonn-vicuna13b": ModelConfig(
        encoders=EncodersConfig(
            visual=_EVA_INSTRUCTBLIP,
            audio=AudioEncoderConfig("openai/whisper-large-v2", dtype="bfloat16"),
            audio_events=AudioEventEncoderConfig("MIT/ast-finetuned-audioset-10-10-0.4593",
                                                 dtype="bfloat16")),
        connector=ConnectorConfig("mrc_qformer", window_s=(5.0, 0.5), queries=(30, 3),
                                  audio_proj_dim=1536, diversity_weight=0.01),
        llm=_VICUNA13B,
        dims=FeatureDims(video_dim=768, video_tokens=32, audio_dim=1280 + 768,
                         audio_rate=50.0)),
    # Audio-Visual LLM: CLIP ViT-L/14 + CLAP audio (time-resolved HTSAT, 3.2 Hz) next to
    # Whisper-large-v2 for speech; linear projectors.
    "avllm-vicuna7b": ModelConfig(
        encoders=EncodersConfig(
            visual=VisualEncoderConfig("openai/clip-vit-large-patch14", layer=-2,
                                       dtype="bfloat16"),
            audio=AudioEncoderConfig("openai/whisper-large-v2", dtype="bfloat16"),
            audio_events=AudioEventEncoderConfig("laion/clap-htsat-unfused",
                                                 dtype="bfloat16")),
        connector=ConnectorConfig("linear", window_s=(0.0,), queries=(1,)),
        llm=LLMConfig("lmsys/vicuna-7b-v1.5", dtype="bfloat16", template="vicuna",
                      gradient_checkpointing=True),
        dims=FeatureDims(video_dim=1024, video_tokens=257, audio_dim=1280 + 768,
                         audio_rate=50.0)),
    # One GPU: CLIP ViT-B/16 (pooled to 16 tokens/frame) + whisper-small + Qwen2.5-0.5B.
    "small-qwen0.5b": ModelConfig(
        encoders=EncodersConfig(
            visual=VisualEncoderConfig("openai/clip-vit-base-patch16", layer=-2,
                                       token_mode="pooled", pooled_tokens=16),
            audio=AudioEncoderConfig("openai/whisper-small")),
        connector=ConnectorConfig("causal_qformer", hidden=256, heads=4, ffn_dim=1024,
                                  window_s=(5.0,), queries=(32,), causal_heads=12),
        llm=LLMConfig("Qwen/Qwen2.5-0.5B-Instruct", dtype="bfloat16"),
        dims=FeatureDims(video_dim=768, video_tokens=16, audio_dim=768, audio_rate=50.0)),
}
