"""Importing a released video-SALMONN delta checkpoint (random tensors, official names)."""

import torch

from av_model import checkpoint
from av_model.convert import convert

H, FFN, DC, VIDEO, WHISPER, BEATS, PROJ = 24, 48, 24, 12, 20, 10, 6
LLM_DIM, LAYERS = 64, 2


def _linear(out: int, inp: int, name: str, state: dict) -> None:
    state[f"{name}.weight"], state[f"{name}.bias"] = torch.randn(out, inp), torch.randn(out)


def _ln(dim: int, name: str, state: dict) -> None:
    state[f"{name}.weight"], state[f"{name}.bias"] = torch.randn(dim), torch.randn(dim)


def _attention(name: str, dim: int, kv: int, state: dict) -> None:
    _linear(dim, dim, f"{name}.self.query", state)
    _linear(dim, kv, f"{name}.self.key", state)
    _linear(dim, kv, f"{name}.self.value", state)
    _linear(dim, dim, f"{name}.output.dense", state)
    _ln(dim, f"{name}.output.LayerNorm", state)


def released_state() -> dict[str, torch.Tensor]:
    """The trainable tensors video-SALMONN's openllama.py saves, at tiny sizes."""
    torch.manual_seed(0)
    s: dict[str, torch.Tensor] = {}
    qf = "video_Qformer.bert"
    _ln(H, f"{qf}.embeddings.LayerNorm", s)
    for i in range(LAYERS):
        layer = f"{qf}.encoder.layer.{i}"
        _attention(f"{layer}.attention", H, H, s)
        _attention(f"{layer}.crossattention", H, DC, s)
        _attention(f"{layer}.encoder_causal_attention", DC, DC, s)
        _linear(FFN, H, f"{layer}.intermediate_query.dense", s)
        _linear(H, FFN, f"{layer}.output_query.dense", s)
        _ln(H, f"{layer}.output_query.LayerNorm", s)
    s["video_query_tokens"] = torch.randn(1, 30, H)
    s["low_query_tokens"] = torch.randn(1, 3, H)
    _ln(DC, "ln_video", s)
    s["video_frame_position_embedding.weight"] = torch.randn(4096, DC)
    _linear(PROJ, WHISPER, "speech_pre_qformer_proj", s)
    _linear(PROJ, BEATS, "beats_pre_qformer_proj", s)
    _linear(LLM_DIM, 2 * H, "llama_proj", s)
    for i in range(2):
        for proj, out in (("q_proj", 64), ("k_proj", 32), ("v_proj", 32), ("o_proj", 64)):
            base = f"llama_model.base_model.model.model.layers.{i}.self_attn.{proj}"
            s[f"{base}.lora_A.default.weight"] = torch.randn(32, 64)
            s[f"{base}.lora_B.default.weight"] = torch.randn(out, 32)
    return s


def test_released_checkpoint_imports_into_our_modules(tiny_encoders, tmp_path):
    state = released_state()
    torch.save(state, tmp_path / "pytorch_model_4_5001.pt")
    out = convert(str(tmp_path / "pytorch_model_4_5001.pt"), "salmonn-vicuna13b",
                  str(tmp_path / "ckpt"), llm=tiny_encoders["llm"])
    model = checkpoint.load(out, load_encoders=False)
    cfg = model.cfg
    assert cfg.connector.kind == "mrc_qformer" and cfg.connector.causal_compat
    assert (cfg.dims.video_dim, cfg.dims.audio_dim, cfg.dims.video_tokens) == (12, 30, 32)
    c = model.connector
    layer = c.qformer.layers[1]
    pre = "video_Qformer.bert.encoder.layer.1"
    pairs = {
        layer.causal.q.weight: f"{pre}.encoder_causal_attention.self.query.weight",
        layer.causal.ln.bias: f"{pre}.encoder_causal_attention.output.LayerNorm.bias",
        layer.cross_attn.k.weight: f"{pre}.crossattention.self.key.weight",
        layer.self_attn.o.weight: f"{pre}.attention.output.dense.weight",
        layer.ffn_in.weight: f"{pre}.intermediate_query.dense.weight",
        layer.ffn_ln.weight: f"{pre}.output_query.LayerNorm.weight",
        c.qformer.query_ln.weight: "video_Qformer.bert.embeddings.LayerNorm.weight",
        c.ln_in.weight: "ln_video.weight",
    }
    for ours, name in pairs.items():
        assert torch.equal(ours, state[name]), name
    # Resolutions in config order (5 s, 0.5 s); released projection input is [low ‖ high].
    assert torch.equal(c.queries.weight[:30], state["video_query_tokens"][0])
    assert torch.equal(c.queries.weight[30:], state["low_query_tokens"][0])
    w = state["llama_proj.weight"]
    assert torch.equal(c.out_proj.weight, torch.cat([w[:, H:], w[:, :H]], dim=1))
    assert torch.equal(c.pos.weight, state["video_frame_position_embedding.weight"][:10 * 32])
    a = c.audio_proj.weight
    assert torch.equal(a[:PROJ, :WHISPER], state["speech_pre_qformer_proj.weight"])
    assert torch.equal(a[PROJ:, WHISPER:], state["beats_pre_qformer_proj.weight"])
    assert a[:PROJ, WHISPER:].abs().sum() == 0
    params = dict(model.llm.named_parameters())
    key = "base_model.model.model.layers.1.self_attn.k_proj.lora_B.default.weight"
    assert torch.equal(params[key], state[f"llama_model.{key}"])
    # The imported model runs: 12 s of video at 2 fps with audio.
    video, audio = torch.randn(24, 32, 12), torch.randn(600, 30)
    from av_model.model import Sample
    batch = model.collate([Sample([{"role": "user", "content": "What happens?"},
                                   {"role": "assistant", "content": "a beep"}], video, audio)])
    out = model(**batch)
    assert torch.isfinite(out.loss)
    assert model.media_tokens(Sample([], video, audio)) == 90   # ceil(24/10) * 30


def test_unmapped_released_tensors_are_refused(tiny_encoders, tmp_path):
    import pytest

    state = released_state()
    state["bp_video_proj.weight"] = torch.randn(4, 4)                # a layout we do not know
    torch.save(state, tmp_path / "delta.pt")
    with pytest.raises(ValueError, match="no place in our modules"):
        convert(str(tmp_path / "delta.pt"), "salmonn-vicuna13b", str(tmp_path / "ckpt"),
                llm=tiny_encoders["llm"])
