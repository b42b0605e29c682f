"""AVModel on tiny random checkpoints: trainable sets, LoRA, checkpoints, generation, cache."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from av_model import checkpoint
from av_model.model import AVModel, FeatureCache, GenerateOptions, Sample
from tests.av_model.model_helpers import TURNS, features, tiny_config

KINDS = ["causal_qformer", "qformer", "mrc_qformer", "linear"]


def _samples():
    v, a = features()
    return [Sample(TURNS, video=v, audio=a),
            Sample([{"role": "user", "content": "Listen."},
                    {"role": "assistant", "content": "two beeps"}], audio=a[:60]),
            Sample([{"role": "user", "content": "<VIS> Look."},
                    {"role": "assistant", "content": "a square"}], video=v[:1], image=False),
            Sample([{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "hi"}])]


@pytest.mark.parametrize("kind", KINDS)
def test_every_connector_trains_end_to_end(tiny_encoders, kind):
    torch.manual_seed(0)
    model = AVModel.build(tiny_config(tiny_encoders, kind), load_encoders=False)
    batch = model.collate(_samples())
    out = model(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.connector.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    media = [model.media_tokens(s) for s in _samples()]
    ids = batch["input_ids"]
    assert torch.isin(ids, model.media_ids).sum(1).tolist() == media
    assert media[-1] == 0


def test_lora_trains_connector_and_adapter_only(tiny_encoders):
    torch.manual_seed(0)
    model = AVModel.build(tiny_config(tiny_encoders), load_encoders=True)
    assert sum(p.numel() for p in model.encoders.parameters() if p.requires_grad) == 0
    model.train()
    assert not model.encoders.visual.training and not model.encoders.audio.training
    base = {n: p.detach().clone() for n, p in model.llm.named_parameters() if "lora_" not in n}
    lora = {n: p.detach().clone() for n, p in model.llm.named_parameters() if "lora_B" in n}
    conn = {n: p.detach().clone() for n, p in model.connector.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    model(**model.collate(_samples())).loss.backward()
    opt.step()
    for n, p in model.llm.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n
    assert all(not torch.equal(dict(model.llm.named_parameters())[n], v) for n, v in lora.items())
    assert all(not torch.equal(dict(model.connector.named_parameters())[n], v)
               for n, v in conn.items())


@pytest.mark.parametrize("mode", ["frozen", "full"])
def test_frozen_and_full_modes(tiny_encoders, mode):
    model = AVModel.build(tiny_config(tiny_encoders, mode=mode), load_encoders=False)
    llm_trainable = {p.requires_grad for p in model.llm.parameters()}
    assert llm_trainable == ({False} if mode == "frozen" else {True})
    assert all(p.requires_grad for p in model.connector.parameters())


@pytest.mark.parametrize("mode", ["lora", "full", "frozen"])
def test_save_load_round_trip_gives_identical_logits(tiny_encoders, tmp_path, mode):
    torch.manual_seed(0)
    cfg = tiny_config(tiny_encoders, "mrc_qformer", mode=mode, diversity_weight=0.01)
    model = AVModel.build(cfg, load_encoders=False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**model.collate(_samples())).loss.backward()
    opt.step()                                           # LoRA B is no longer zero
    model.eval()
    with torch.no_grad():
        want = model(**model.collate(_samples())).logits
    checkpoint.save(model, tmp_path / "ckpt")
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert {"avray.yaml", "connector.safetensors", "tokenizer"} <= set(files)
    assert ("adapter" in files) == (mode == "lora") and ("llm" in files) == (mode == "full")
    again = checkpoint.load(tmp_path / "ckpt", load_encoders=False)
    with torch.no_grad():
        got = again(**again.collate(_samples())).logits
    assert torch.equal(got, want)
    if mode == "lora":
        checkpoint.save(model, tmp_path / "merged", merge=True)
        merged = checkpoint.load(tmp_path / "merged", load_encoders=False)
        assert merged.cfg.llm.mode == "full"
        with torch.no_grad():
            torch.testing.assert_close(merged(**merged.collate(_samples())).logits, want,
                                       atol=1e-4, rtol=1e-4)
    with pytest.raises(FileNotFoundError, match="not an avray checkpoint"):
        checkpoint.load(tmp_path, load_encoders=False)


def test_generate_greedy_beam_sampling_and_stop(tiny_encoders):
    torch.manual_seed(0)
    model = AVModel.build(tiny_config(tiny_encoders), load_encoders=False).eval()
    prompts = [Sample(s.turns[:1], s.video, s.audio) for s in _samples()]
    greedy = model.generate(prompts, GenerateOptions(max_new_tokens=6))
    assert len(greedy) == 4 and all(isinstance(t, str) for t in greedy)
    assert greedy == model.generate(prompts, GenerateOptions(max_new_tokens=6))  # deterministic
    single = model.generate(prompts[:1], GenerateOptions(max_new_tokens=6))
    assert single[0] == greedy[0]                        # left padding does not change answers
    beams = model.generate(prompts[:2], GenerateOptions(max_new_tokens=4, num_beams=3))
    torch.manual_seed(1)
    sampled = model.generate(prompts[:2], GenerateOptions(max_new_tokens=4, do_sample=True,
                                                          temperature=0.8, top_p=0.9))
    assert len(beams) == len(sampled) == 2
    if len(greedy[0]) > 1:
        stop = greedy[0][1]
        cut = model.generate(prompts[:1], GenerateOptions(max_new_tokens=6, stop=(stop,)))
        assert stop not in cut[0] and greedy[0].startswith(cut[0])


def test_raw_media_encoding_uses_the_cache(tiny_encoders):
    model = AVModel.build(tiny_config(tiny_encoders, events=True), load_encoders=True)
    frames = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    wave = np.random.default_rng(1).standard_normal(32000).astype(np.float32) * 0.1
    v, a = model.encode_media(frames, wave, cache_key="conv1:clip")
    assert v.shape == (4, 17, 32) and a.shape == (100, 64)     # Whisper 32 ‖ AST 32 dims
    assert model.cache.misses == 1
    v2, a2 = model.encode_media(frames, wave, cache_key="conv1:clip")
    assert v2 is v and a2 is a and model.cache.hits == 1
    cache = FeatureCache(max_items=2)
    for k in "abc":
        cache.put(k, k)
    assert cache.get("a") is None and cache.get("c") == "c"


def test_import_av_model_never_imports_ray_or_mlflow():
    # sys.modules[name] = None makes `import name` raise ImportError (and find_spec say
    # "not installed"), as on a machine without ray or mlflow.
    code = ("import sys\n"
            "sys.modules['ray'] = None\n"
            "sys.modules['mlflow'] = None\n"
            "import av_model, av_model.model, av_model.checkpoint, av_model.convert\n"
            "import av_model.connectors.factory, av_model.tiny\n"
            "assert not [m for m in sys.modules if m.startswith(('ray.', 'mlflow.'))]\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gradient_checkpointing_and_llm_dtype(tiny_encoders, dtype):
    from tests.av_model.model_helpers import replace

    cfg = tiny_config(tiny_encoders)
    cfg = replace(cfg, llm=replace(cfg.llm, gradient_checkpointing=True, dtype=dtype))
    torch.manual_seed(0)
    model = AVModel.build(cfg, load_encoders=False).train()
    assert next(model.llm.parameters()).dtype == getattr(torch, dtype)
    out = model(**model.collate(_samples()))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    lora = [p.grad for n, p in model.llm.named_parameters() if "lora_B" in n]  # A: B=0 at init
    assert lora and all(g is not None and g.abs().sum() > 0 for g in lora)
    assert model.connector.out_proj.weight.grad.abs().sum() > 0


def test_text_only_batch_still_touches_every_connector_parameter(tiny_encoders):
    """Under DDP / ZeRO-3 every rank must use every trainable parameter each step."""
    model = AVModel.build(tiny_config(tiny_encoders), load_encoders=False).train()
    out = model(**model.collate(_samples()[-1:]))
    out.loss.backward()
    assert all(p.grad is not None for p in model.connector.parameters())


def test_merged_export_leaves_the_live_model_training_its_adapter(tiny_encoders, tmp_path):
    torch.manual_seed(0)
    model = AVModel.build(tiny_config(tiny_encoders), load_encoders=False).eval()
    with torch.no_grad():
        before = model(**model.collate(_samples())).logits
    checkpoint.save(model, tmp_path / "merged", merge=True)
    assert any("lora_" in n for n, _ in model.llm.named_parameters())
    with torch.no_grad():
        assert torch.equal(model(**model.collate(_samples())).logits, before)


def test_generate_restores_mode_and_refuses_overlong_prompts(tiny_encoders):
    from tests.av_model.model_helpers import replace

    cfg = tiny_config(tiny_encoders)
    model = AVModel.build(replace(cfg, llm=replace(cfg.llm, max_length=24)),
                          load_encoders=False).train()
    with pytest.raises(ValueError, match="over llm.max_length"):
        model.generate([Sample(_samples()[0].turns[:1], *features())])
    assert model.training


def test_connector_kind_defaults(tiny_encoders):
    from av_model.connectors.factory import build_connector
    from tests.av_model.model_helpers import replace

    cfg = tiny_config(tiny_encoders, "qformer")
    assert not AVModel.build(cfg, load_encoders=False).connector.cfg.causal
    assert AVModel.build(tiny_config(tiny_encoders), load_encoders=False).connector.cfg.causal
    lin = tiny_config(tiny_encoders, "linear")
    pooled = replace(lin, encoders=replace(lin.encoders, visual=replace(
        lin.encoders.visual, token_mode="pooled")), dims=replace(lin.dims, video_dim=32,
                                                                   video_tokens=4, audio_dim=32,
                                                                   audio_rate=50.0))
    assert not build_connector(pooled, 64).cfg.visual_cls


@pytest.mark.parametrize("kind", ["causal_qformer", "linear"])
def test_output_norm_starts_media_tokens_at_the_text_scale(tiny_encoders, tmp_path, kind):
    from av_model.model import embedding_rms
    from av_model.sync import synchronise

    torch.manual_seed(0)
    plain = AVModel.build(tiny_config(tiny_encoders, kind), load_encoders=False)
    assert not any("out_norm" in k for k in plain.connector.state_dict())  # released layout
    model = AVModel.build(tiny_config(tiny_encoders, kind, output_norm="rms"),
                          load_encoders=False)
    text_rms = embedding_rms(model.llm.get_input_embeddings().weight)
    assert 0.005 < text_rms < 0.1
    v, a = features()
    dims = model.cfg.dims
    synced = synchronise([v, None], [a, a[:60]], fps=model.cfg.encoders.fps,
                         audio_rate=dims.audio_rate, video_dim=dims.video_dim,
                         audio_dim=dims.audio_dim, num_visual_tokens=dims.video_tokens)
    out, raw = model.connector(synced), plain.connector(synced)
    n = int(out.lengths[1])
    assert n < out.embeds.shape[1] and torch.all(out.embeds[1, n:] == 0)  # padding stays 0
    for emb, ref, length in zip(out.embeds, raw.embeds, out.lengths):
        live = ref[:int(length)].abs().sum(-1) > 0   # linear: an absent modality's token is 0
        rms = emb[:int(length)].pow(2).mean(-1).sqrt()                # (N,)
        assert live.sum() >= 3 and torch.all(rms[~live] == 0)
        torch.testing.assert_close(rms[live], torch.full_like(rms[live], text_rms),
                                   rtol=1e-3, atol=0)
    assert raw.embeds[0, :int(raw.lengths[0])].pow(2).mean().sqrt() > 5 * text_rms
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**model.collate(_samples())).loss.backward()
    opt.step()
    gain = model.connector.out_norm.norm.weight.detach().clone()
    assert not torch.allclose(gain, torch.full_like(gain, text_rms))
    checkpoint.save(model, tmp_path / "ckpt")
    again = checkpoint.load(tmp_path / "ckpt", load_encoders=False)
    assert torch.equal(again.connector.out_norm.norm.weight, gain)  # the trained gain, not init


def test_answer_only_loss_matches_plain_cross_entropy():
    from av_model.losses import causal_lm_loss

    logits = torch.randn(2, 6, 11)
    labels = torch.tensor([[-100, -100, 3, 4, -100, 1], [-100, 2, -100, -100, -100, -100]])
    want = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11),
                                             labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(causal_lm_loss(logits, labels), want)
    per = causal_lm_loss(logits, labels, reduction="none")
    torch.testing.assert_close(per[1], torch.nn.functional.cross_entropy(logits[1, :1], labels[1, 1:2]))
