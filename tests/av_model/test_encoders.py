"""Frozen encoders on tiny random checkpoints: shapes, lengths, chunking, frozenness."""

import math

import numpy as np
import pytest
import torch

from av_model.config import AudioEncoderConfig, AudioEventEncoderConfig, VisualEncoderConfig
from av_model.encoders import (AudioEventEncoder, VisualEncoder, WhisperAudioEncoder,
                               events_frame_rate, visual_input_spec, whisper_frame_rate)


@pytest.fixture(scope="module")
def whisper(tiny_encoders):
    return WhisperAudioEncoder(AudioEncoderConfig(tiny_encoders["audio"], chunks_per_forward=2),
                               device="cpu")


@pytest.mark.parametrize("mode,tokens", [("all", 17), ("cls", 1), ("patches", 16), ("pooled", 4)])
def test_visual_token_modes(tiny_encoders, mode, tokens):
    enc = VisualEncoder(VisualEncoderConfig(tiny_encoders["visual"], token_mode=mode,
                                            frames_per_forward=3), device="cpu")
    frames = np.random.default_rng(0).integers(0, 255, (7, 32, 32, 3), dtype=np.uint8)
    out = enc.encode(frames)
    assert out.shape == (7, tokens, 32) == (7, enc.num_tokens, enc.hidden_size)
    # Chunked forward (3 frames per pass) equals one frame at a time.
    single = np.concatenate([enc.encode(frames[i:i + 1]) for i in range(7)])
    np.testing.assert_allclose(out, single, atol=1e-5)


def test_visual_layer_selection_and_input_check(tiny_encoders):
    last = VisualEncoder(VisualEncoderConfig(tiny_encoders["visual"], layer=-1), device="cpu")
    penult = VisualEncoder(VisualEncoderConfig(tiny_encoders["visual"], layer=-2), device="cpu")
    frames = np.full((2, 32, 32, 3), 128, np.uint8)
    assert not np.allclose(last.encode(frames), penult.encode(frames))
    with pytest.raises(ValueError, match="frames must be"):
        last.encode(np.zeros((2, 16, 16, 3), np.uint8))
    spec = visual_input_spec(VisualEncoderConfig(tiny_encoders["visual"]))
    assert spec.image_size == 32 and spec.model_type == "clip_vision_model"


def test_whisper_lengths_any_duration(whisper):
    # Tiny Whisper has a 5 s window: 12 s spans three windows, nothing is dropped.
    assert whisper.window_samples == 80000 and whisper_frame_rate is not None
    rng = np.random.default_rng(1)
    lengths = [16000 * 12, 93680, 160000, 80000, 320, 1, 0]  # incl. exact window multiples
    outs = whisper.encode([rng.standard_normal(n).astype(np.float32) * 0.1 for n in lengths])
    assert [o.shape for o in outs] == [(math.ceil(n / 320), 32) for n in lengths]


def test_whisper_windows_are_independent_of_batching(whisper):
    rng = np.random.default_rng(2)
    long = rng.standard_normal(16000 * 7).astype(np.float32) * 0.1
    first_window = long[:80000]
    together = whisper.encode([long, rng.standard_normal(16000).astype(np.float32)])[0]
    alone = whisper.encode([first_window])[0]
    np.testing.assert_allclose(together[:250], alone, atol=1e-4)
    assert together.shape == (350, 32)
    assert whisper.frame_rate == 50.0


def test_tiny_whisper_hears_the_sound_not_just_the_clock(whisper):
    """Most of the tiny Whisper's output variance comes from the sound, not from the frame's
    position (the default random init gave 0.02 %, and bench-model could not hear a tone)."""
    rng, t = np.random.default_rng(3), np.arange(80000) / 16000
    clips = []
    for i in range(12):
        x = 0.01 * rng.standard_normal(t.size)
        on = (t > rng.uniform(0.2, 1.0)) & (t < rng.uniform(2.5, 4.0))
        x[on] += 0.3 * np.sin(2 * np.pi * (262 if i % 2 else 1047) * t[on])
        clips.append(x.astype(np.float32))
    feats = np.stack(whisper.encode(clips))                         # (clips, 250, D)
    total = feats.reshape(-1, feats.shape[-1]).var(0).mean()
    assert feats.var(0).mean() / total > 0.2    # variance across clips at a fixed frame
    clip_means = feats.mean(1)
    gap = np.abs(clip_means[0::2].mean(0) - clip_means[1::2].mean(0)).mean()
    assert gap > 0.1 * np.sqrt(total)           # high vs low tone, not a rounding error


def test_audio_event_encoder_is_time_resolved(tiny_encoders):
    enc = AudioEventEncoder(AudioEventEncoderConfig(tiny_encoders["audio_events"]), device="cpu")
    assert enc.frame_rate == events_frame_rate(tiny_encoders["audio_events"]) == 10.0
    window = enc.window_samples  # 19 tokens × 1600 samples
    lengths = [16000 * 5, 1000, window, window + 100, 2 * window, 100, 1, 0]
    outs = enc.encode([np.zeros(n, np.float32) for n in lengths])
    assert [o.shape for o in outs] == [(math.ceil(n / 1600), 32) for n in lengths]


def test_encoders_are_frozen(whisper, tiny_encoders):
    vis = VisualEncoder(VisualEncoderConfig(tiny_encoders["visual"]), device="cpu")
    for enc in (vis, whisper):
        enc.train()
        assert not enc.training and not any(m.training for m in enc.modules())
        assert not any(p.requires_grad for p in enc.parameters())
    with torch.enable_grad():
        out = vis(torch.rand(1, 3, 32, 32))
    assert not out.requires_grad


def test_instructblip_qformer_token_mode_reads_only_vision_and_qformer(tmp_path):
    """token_mode=qformer gives the checkpoint's own Q-Former queries per frame (FAVOR)."""
    from transformers import InstructBlipForConditionalGeneration

    from av_model.encoders import visual_dims
    from av_model.tiny import TinySizes, save_tiny_instructblip

    path = save_tiny_instructblip(tmp_path / "iblip", TinySizes(), seed=0)
    cfg = VisualEncoderConfig(str(path), token_mode="qformer")
    assert visual_dims(cfg) == (4, 32)
    enc = VisualEncoder(cfg, device="cpu")
    assert sum(p.numel() for p in enc.parameters() if p.requires_grad) == 0
    assert not any("language_model" in n for n, _ in enc.named_parameters())
    frames = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    out = enc.encode(frames)
    assert out.shape == (3, 4, 32) == (3, enc.num_tokens, enc.hidden_size)
    full = InstructBlipForConditionalGeneration.from_pretrained(path).eval()
    pixels = (torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255 - enc.mean) / enc.std
    with torch.no_grad():
        image = full.vision_model(pixel_values=pixels).last_hidden_state
        want = full.qformer(input_ids=None, query_embeds=full.query_tokens.expand(3, -1, -1),
                            encoder_hidden_states=image).last_hidden_state
    np.testing.assert_allclose(out, want.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="token_mode"):
        visual_input_spec(VisualEncoderConfig(_clip_path(tmp_path), token_mode="qformer"))


def _clip_path(tmp_path):
    from av_model.tiny import TinySizes, save_tiny_visual

    return str(save_tiny_visual(tmp_path / "clip", TinySizes(), seed=0))


def test_clap_audio_tower_gives_time_resolved_tokens(tmp_path):
    """CLAP (Audio-Visual LLM's audio tower) loads from a whole CLAP checkpoint, windows
    tile the waveform, and a change in the last window only moves that window's tokens."""
    from transformers import ClapModel

    from av_model.encoders.bundle import event_encoder
    from av_model.tiny import TinySizes, save_tiny_clap

    path = save_tiny_clap(tmp_path / "clap", TinySizes(), seed=0)
    enc = event_encoder(AudioEventEncoderConfig(str(path), chunks_per_forward=2), "cpu")
    assert type(enc).__name__ == "ClapEventEncoder"
    assert enc.frame_rate == events_frame_rate(str(path)) == 16.0   # 32 tokens per 2 s
    full = ClapModel.from_pretrained(path)
    for name, p in enc.model.named_parameters():
        assert torch.equal(p, dict(full.audio_model.named_parameters())[name]), name
    assert sum(p.numel() for p in enc.parameters() if p.requires_grad) == 0
    rng = np.random.default_rng(0)
    wave = rng.standard_normal(16000 * 5 + 300).astype(np.float32) * 0.1
    out = enc.encode([wave, wave[:16000]])
    assert [o.shape for o in out] == [(81, 16), (16, 16)]            # ceil(n / 1000)
    changed = wave.copy()
    changed[16000 * 4:] = rng.standard_normal(len(wave) - 16000 * 4) * 0.5
    moved = np.abs(enc.encode([changed])[0] - out[0]).sum(-1) > 1e-6
    assert not moved[:64].any() and moved[64:].any()                 # windows 0-1 untouched
