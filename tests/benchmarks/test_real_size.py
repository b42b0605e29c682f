"""The random-weight towers of `benchmarks.real_size` stand in for hub checkpoints in the GPU
benchmarks, so their dimensions must be the ones the presets declare (a drifted size would
make every figure measure the wrong model). Configs only: no weights are built here."""

from __future__ import annotations

from transformers import CLIPVisionConfig, WhisperConfig

from av_model.config import MODEL_PRESETS
from benchmarks.real_size import AUDIO, LLM, VISUAL


def test_towers_match_the_presets_dims():
    avllm = MODEL_PRESETS["avllm-vicuna7b"].dims       # CLIP ViT-L/14, every token
    assert VISUAL["clip-vit-large-patch14"]["hidden_size"] == avllm.video_dim
    clip_l = CLIPVisionConfig(**VISUAL["clip-vit-large-patch14"])
    assert (clip_l.image_size // clip_l.patch_size) ** 2 + 1 == avllm.video_tokens
    small = MODEL_PRESETS["small-qwen0.5b"].dims        # CLIP-B/16 pooled, whisper-small
    assert VISUAL["clip-vit-base-patch16"]["hidden_size"] == small.video_dim
    assert AUDIO["whisper-small"]["d_model"] == small.audio_dim
    favor = MODEL_PRESETS["favor-vicuna13b"].dims        # Whisper large-v2
    assert AUDIO["whisper-large-v2"]["d_model"] == favor.audio_dim
    # 30 s windows at 50 Hz after the stride-2 convolution, as the audio encoder expects
    assert WhisperConfig(**AUDIO["whisper-large-v2"]).num_mel_bins == 80


def test_llms_are_the_named_sizes():
    for name, billions in (("llama-3.2-1b", 1.24), ("qwen2-0.5b", 0.49)):
        _, _, d = LLM[name]
        head_dim = d.get("head_dim", d["hidden_size"] // d["num_attention_heads"])
        attn = d["hidden_size"] * head_dim * (2 * d["num_attention_heads"]
                                              + 2 * d["num_key_value_heads"])
        mlp = 3 * d["hidden_size"] * d["intermediate_size"]
        params = d["num_hidden_layers"] * (attn + mlp) + d["vocab_size"] * d["hidden_size"]
        assert abs(params / 1e9 - billions) < 0.03, (name, params)
