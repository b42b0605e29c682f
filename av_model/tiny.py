"""Tiny random-weight encoders built from configs and saved locally.

Why: no hub downloads exist in CI or on air-gapped clusters, yet every path (ingest,
training, serving) must run for real. These checkpoints have the exact on-disk layout of
the released ones (config.json, safetensors, preprocessor_config.json), so the same
``from_pretrained`` code loads them; only the sizes are small. Weights are seeded, so two
builds with the same seed are identical.

    avray tiny --out .cache/tiny        # writes visual/, audio/, audio_events/
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (ASTConfig, ASTFeatureExtractor, ASTModel, CLIPImageProcessor,
                          CLIPVisionConfig, CLIPVisionModel, WhisperConfig,
                          WhisperFeatureExtractor, WhisperModel)

log = logging.getLogger(__name__)


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
    WhisperModel(cfg).save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80, chunk_length=sizes.whisper_window_s).save_pretrained(out)
    return out


def save_tiny_ast(out: Path, sizes: TinySizes, seed: int) -> Path:
    torch.manual_seed(seed + 2)
    max_length = int(sizes.events_window_s * 100)  # 10 ms fbank frames per window
    cfg = ASTConfig(hidden_size=sizes.events_dim, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, num_mel_bins=32, max_length=max_length,
                    patch_size=16, frequency_stride=16, time_stride=10)
    ASTModel(cfg).save_pretrained(out)
    ASTFeatureExtractor(num_mel_bins=32, max_length=max_length).save_pretrained(out)
    return out


def save_tiny_encoders(out_dir: str | Path, seed: int = 0,
                       sizes: TinySizes = TinySizes()) -> dict[str, str]:
    """Write visual/, audio/ and audio_events/ checkpoints under ``out_dir``; return paths."""
    root = Path(out_dir)
    paths = {
        "visual": save_tiny_visual(root / "visual", sizes, seed),
        "audio": save_tiny_whisper(root / "audio", sizes, seed),
        "audio_events": save_tiny_ast(root / "audio_events", sizes, seed),
    }
    log.info("tiny encoders written under %s", root)
    return {k: str(v) for k, v in paths.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="avray tiny", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory to write the checkpoints to")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name, path in save_tiny_encoders(args.out, args.seed).items():
        log.info("%s: %s", name, path)


if __name__ == "__main__":
    main()
