"""Random-weight checkpoints at the real presets' dimensions, saved like hub checkpoints.

Neither CI nor the lent GPU machines can download weights, yet throughput has to be measured
at real sizes: the cost of a forward pass depends on the dimensions, not on the values. Each
architecture's published configuration is written out here (the hub name it mirrors is the
key) and instantiated with random weights, then saved with ``save_pretrained`` so the real
loading code (``from_pretrained`` on a directory) runs unchanged.

Only what the pipelines read is real-size: Whisper keeps its full encoder but a one-layer
decoder (``av_model.encoders.audio`` uses the encoder alone), and the LLM's tokenizer is the
offline byte-level BPE of ``av_model.tiny`` (the model keeps its real vocabulary, so the
embedding and LM-head costs are real; ids past the tokenizer's decode to nothing).

    python -m benchmarks.real_size --out DIR --visual clip-vit-large-patch14 \
        --audio whisper-large-v2 --llm llama-3.2-1b
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from transformers import (CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig,
                          LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, WhisperConfig,
                          WhisperFeatureExtractor, WhisperModel)

from av_model.tiny import _DEFAULT_TEXTS, train_tiny_tokenizer

log = logging.getLogger("benchmarks.real_size")

# Published vision-tower dimensions (the hub configs' vision_config).
VISUAL = {
    "clip-vit-large-patch14": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                   num_attention_heads=16, image_size=224, patch_size=14,
                                   projection_dim=768),
    "clip-vit-base-patch16": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                  num_attention_heads=12, image_size=224, patch_size=16,
                                  projection_dim=512),
}
# Whisper encoders (30 s windows: 1500 positions at 50 Hz after the stride-2 convolution).
AUDIO = {
    "whisper-large-v2": dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20,
                             encoder_ffn_dim=5120, num_mel_bins=80),
    "whisper-small": dict(d_model=768, encoder_layers=12, encoder_attention_heads=12,
                          encoder_ffn_dim=3072, num_mel_bins=80),
}
# Decoder-only LLMs: (config class, model class, dimensions).
LLM = {
    "llama-3.2-1b": (LlamaConfig, LlamaForCausalLM, dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, rope_theta=500000.0,
        max_position_embeddings=8192, tie_word_embeddings=True)),
    "qwen2-0.5b": (Qwen2Config, Qwen2ForCausalLM, dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, rope_theta=1000000.0,
        max_position_embeddings=8192, tie_word_embeddings=True)),
}


def save_visual(out: Path, name: str, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    dims = VISUAL[name]
    CLIPVisionModel(CLIPVisionConfig(**dims)).save_pretrained(out)
    size = dims["image_size"]
    CLIPImageProcessor(size={"shortest_edge": size},
                       crop_size={"height": size, "width": size}).save_pretrained(out)
    return out


def save_audio(out: Path, name: str, seed: int = 0) -> Path:
    torch.manual_seed(seed + 1)
    cfg = WhisperConfig(vocab_size=64, decoder_layers=1, decoder_attention_heads=4,
                        decoder_ffn_dim=64, max_source_positions=1500, max_target_positions=32,
                        pad_token_id=1, bos_token_id=2, eos_token_id=3, decoder_start_token_id=2,
                        suppress_tokens=[], begin_suppress_tokens=[], **AUDIO[name])
    WhisperModel(cfg).save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80, chunk_length=30).save_pretrained(out)
    return out


def save_llm(out: Path, name: str, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> Path:
    tokenizer = train_tiny_tokenizer([_DEFAULT_TEXTS] * 4, 512)
    config_cls, model_cls, dims = LLM[name]
    torch.manual_seed(seed + 3)
    cfg = config_cls(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id, **dims)
    model_cls(cfg).to(dtype).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def save(out: str | Path, visual: str | None = None, audio: str | None = None,
         llm: str | None = None, seed: int = 0) -> dict[str, str]:
    """Write the requested checkpoints under ``out`` (visual/, audio/, llm/); skip existing."""
    root = Path(out).resolve()
    paths: dict[str, str] = {}
    for key, name, saver in (("visual", visual, save_visual), ("audio", audio, save_audio),
                             ("llm", llm, save_llm)):
        if name is None:
            continue
        target = root / key
        if not (target / "config.json").exists():
            saver(target, name, seed)
            log.info("%s: random %s written to %s", key, name, target)
        paths[key] = str(target)
    return paths


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--visual", choices=sorted(VISUAL))
    parser.add_argument("--audio", choices=sorted(AUDIO))
    parser.add_argument("--llm", choices=sorted(LLM))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return save(args.out, args.visual, args.audio, args.llm, args.seed)


if __name__ == "__main__":
    main()
