"""Tiny random-weight encoders built from configs and saved locally.

Why: no hub downloads exist in CI or on air-gapped clusters, yet every path (ingest,
training, serving) must run for real. These checkpoints have the exact on-disk layout of
the released ones (config.json, safetensors, preprocessor_config.json), so the same
``from_pretrained`` code loads them; only the sizes are small. Weights are seeded, so two
builds with the same seed are identical.

    avray tiny --out .cache/tiny   # visual/, audio/, audio_events/, llm/, model.yaml (preset)

The tiny LLM's tokenizer is a byte-level BPE trained offline with ``tokenizers`` (so any
text tokenizes); it has no chat template on purpose, so the Vicuna fallback is exercised.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (ASTConfig, ASTFeatureExtractor, ASTModel, CLIPImageProcessor,
                          CLIPVisionConfig, CLIPVisionModel, InstructBlipConfig,
                          InstructBlipForConditionalGeneration, LlamaConfig, LlamaForCausalLM,
                          PreTrainedTokenizerFast, WhisperConfig, WhisperFeatureExtractor,
                          WhisperModel)

from av_model.config import (AudioEncoderConfig, AudioEventEncoderConfig, ConnectorConfig,
                             EncodersConfig, FeatureDims, LLMConfig, ModelConfig,
                             VisualEncoderConfig)
from av_model.configlib import dump_yaml

log = logging.getLogger(__name__)


# Bumped whenever the tiny towers' weights change (2: a Whisper that hears, see
# _let_the_sound_through), so caches keyed on it never pair new towers with old features.
TINY_VERSION = 2


@dataclass(frozen=True)
class TinySizes:
    """Dimensions of the tiny towers; small enough for a 2-core CI machine."""

    image_size: int = 32
    patch_size: int = 8
    vision_dim: int = 32
    audio_dim: int = 32
    # Whisper context in seconds; 5 s (instead of 30) keeps CPU cost low and makes every
    # clip longer than 5 s exercise the multi-window path.
    whisper_window_s: int = 5
    events_dim: int = 32
    events_window_s: float = 2.0
    llm_dim: int = 64
    llm_layers: int = 2
    llm_vocab: int = 512


# Words of the built-in synthetic corpus and chat scaffolding, so the default tiny tokenizer
# has merges for them; callers may pass their own texts (e.g. a manifest's conversations).
_DEFAULT_TEXTS = (
    "USER: ASSISTANT: What colour is the circle square triangle star? red green blue yellow "
    "white orange purple. Which appeared first, the red circle or the blue square? "
    "Is the tone high or low? How many beeps are there? zero one two three four five. "
    "What colour was on screen when the first beep sounded? What word was spoken? "
    "A red circle, then a blue square. A low tone and two beeps. No sound. Describe the video. "
    "A chat between a curious user and an artificial intelligence assistant.")
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                  "pad_token": "<pad>"}


def save_tiny_visual(out: Path, sizes: TinySizes, seed: int) -> Path:
    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=sizes.vision_dim, intermediate_size=2 * sizes.vision_dim,
                           num_hidden_layers=2, num_attention_heads=2,
                           image_size=sizes.image_size, patch_size=sizes.patch_size)
    CLIPVisionModel(cfg).save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": sizes.image_size},
                       crop_size={"height": sizes.image_size, "width": sizes.image_size}
                       ).save_pretrained(out)
    return out


def save_tiny_whisper(out: Path, sizes: TinySizes, seed: int) -> Path:
    torch.manual_seed(seed + 1)
    positions = sizes.whisper_window_s * 50  # encoder frames per window at 50 Hz
    # Special token ids must lie inside the tiny vocabulary (see shared/PITFALLS.md).
    cfg = WhisperConfig(vocab_size=64, num_mel_bins=80, d_model=sizes.audio_dim,
                        encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,
                        max_source_positions=positions, max_target_positions=32,
                        pad_token_id=1, bos_token_id=2, eos_token_id=3,
                        decoder_start_token_id=2, suppress_tokens=[], begin_suppress_tokens=[])
    model = WhisperModel(cfg)
    _let_the_sound_through(model.encoder)
    model.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80, chunk_length=sizes.whisper_window_s).save_pretrained(out)
    return out


def _let_the_sound_through(encoder: torch.nn.Module) -> None:
    """Make a random Whisper encoder's output depend on the sound, as a trained one's does.

    With the default init (std 0.02) the two-conv stem shrinks the log-mel ~50x and the
    fixed sinusoidal positions then carry 99.985 % of the output's variance (measured on the
    synthetic corpus): every clip encodes nearly alike, and no connector can hear a tone
    (bench-model answered every audio question with the prior). Variance-preserving convs
    and positions at 0.1x leave 82 % of the variance to the sound on that corpus
    (benchmarks/RESULTS.md).
    """
    for conv in (encoder.conv1, encoder.conv2):
        torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="linear")
        torch.nn.init.zeros_(conv.bias)
    with torch.no_grad():
        encoder.embed_positions.weight.mul_(0.1)


def save_tiny_ast(out: Path, sizes: TinySizes, seed: int) -> Path:
    torch.manual_seed(seed + 2)
    max_length = int(sizes.events_window_s * 100)  # 10 ms fbank frames per window
    cfg = ASTConfig(hidden_size=sizes.events_dim, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, num_mel_bins=32, max_length=max_length,
                    patch_size=16, frequency_stride=16, time_stride=10)
    ASTModel(cfg).save_pretrained(out)
    ASTFeatureExtractor(num_mel_bins=32, max_length=max_length).save_pretrained(out)
    return out


def save_tiny_instructblip(out: Path, sizes: TinySizes, seed: int) -> Path:
    """A whole tiny InstructBLIP (vision + Q-Former + LM), for the ``qformer`` token mode."""
    torch.manual_seed(seed + 4)
    d = sizes.vision_dim
    cfg = InstructBlipConfig(
        vision_config=dict(hidden_size=d, intermediate_size=2 * d, num_hidden_layers=1,
                           num_attention_heads=2, image_size=sizes.image_size,
                           patch_size=sizes.patch_size),
        qformer_config=dict(hidden_size=d, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=2 * d, encoder_hidden_size=d, vocab_size=100),
        text_config=dict(model_type="llama", hidden_size=d, intermediate_size=2 * d,
                         num_hidden_layers=1, num_attention_heads=2, vocab_size=100),
        num_query_tokens=4)
    InstructBlipForConditionalGeneration(cfg).save_pretrained(out)
    return out


def save_tiny_clap(out: Path, sizes: TinySizes, seed: int) -> Path:
    """A tiny whole CLAP (text + HTSAT audio) with 2 s windows, laid out like the hub's."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    torch.manual_seed(seed + 5)
    cfg = ClapConfig(
        audio_config=dict(spec_size=64, num_mel_bins=16, hidden_size=16,
                          patch_embeds_hidden_size=8, depths=[1, 1], num_attention_heads=[2, 2],
                          window_size=4, patch_stride=[4, 4], patch_size=4, enable_fusion=False,
                          projection_dim=16),
        text_config=dict(vocab_size=100, hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32, projection_dim=16),
        projection_dim=16)
    ClapModel(cfg).save_pretrained(out)
    ClapFeatureExtractor(feature_size=16, max_length_s=2).save_pretrained(out)
    return out


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained offline; every byte is in the alphabet, so nothing is <unk>."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                  special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def save_tiny_llm(out: Path, sizes: TinySizes, seed: int,
                  texts: Iterable[str] | None = None) -> Path:
    """A 2-layer Llama and its tokenizer, saved like a hub checkpoint (loadable by name/path)."""
    tokenizer = train_tiny_tokenizer(texts or [_DEFAULT_TEXTS] * 4, sizes.llm_vocab)
    torch.manual_seed(seed + 3)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=sizes.llm_dim,
                      intermediate_size=2 * sizes.llm_dim, num_hidden_layers=sizes.llm_layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def tiny_model_config(paths: dict[str, str], kind: str = "causal_qformer",
                      events: bool = False) -> ModelConfig:
    """The ``tiny`` preset over checkpoints written by ``save_tiny_models``.

    Same structure as the real presets (2-layer causal Q-Former, 2 s windows of 4 queries,
    LoRA), sized for a 2-core CI machine; ``kind`` swaps the connector.
    """
    windows = {"qformer": ((0.0,), (4,)), "mrc_qformer": ((2.0, 0.5), (4, 1))}
    window_s, queries = windows.get(kind, ((2.0,), (4,)))
    return ModelConfig(
        encoders=EncodersConfig(
            visual=VisualEncoderConfig(paths["visual"]), audio=AudioEncoderConfig(paths["audio"]),
            audio_events=AudioEventEncoderConfig(paths["audio_events"] if events else None)),
        connector=ConnectorConfig(kind=kind, hidden=32, heads=2, ffn_dim=64, causal_heads=2,
                                  window_s=window_s, queries=queries, max_s=32.0),
        llm=LLMConfig(paths["llm"], mode="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0))


def tiny_dims(sizes: TinySizes = TinySizes()) -> FeatureDims:
    """The feature dimensions the tiny towers produce (patch tokens + CLS, Whisper at 50 Hz)."""
    return FeatureDims(video_dim=sizes.vision_dim, audio_dim=sizes.audio_dim, audio_rate=50.0,
                       video_tokens=(sizes.image_size // sizes.patch_size) ** 2 + 1)


def save_tiny_models(out_dir: str | Path, seed: int = 0,
                     sizes: TinySizes = TinySizes()) -> dict[str, str]:
    """Write visual/, audio/, audio_events/, llm/ and the tiny preset ``model.yaml``."""
    root = Path(out_dir).resolve()  # model.yaml must work from any working directory
    paths = {
        "visual": save_tiny_visual(root / "visual", sizes, seed),
        "audio": save_tiny_whisper(root / "audio", sizes, seed),
        "audio_events": save_tiny_ast(root / "audio_events", sizes, seed),
        "llm": save_tiny_llm(root / "llm", sizes, seed),
    }
    paths = {k: str(v) for k, v in paths.items()}
    cfg = tiny_model_config(paths)
    (root / "model.yaml").write_text(dump_yaml(dataclasses.replace(cfg, dims=tiny_dims(sizes))))
    log.info("tiny models and the tiny preset (model.yaml) written under %s", root)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="avray tiny", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory to write the checkpoints to")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name, path in save_tiny_models(args.out, args.seed).items():
        log.info("%s: %s", name, path)


if __name__ == "__main__":
    main()
