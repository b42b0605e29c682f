"""Windowed (causal) Q-Former: shapes, lengths, causality, window independence, masks, loss,
and parity with transformers' Blip2QFormerModel."""

import pytest
import torch

from av_model.configlib import ConfigError
from av_model.connectors import QFormerConfig, QFormerLayer, WindowedQFormer
from av_model.connectors.qformer import frame_block_mask
from av_model.losses import mean_pairwise_cosine
from tests.av_model.conn_helpers import DA, DV, F, L, NV, make_batch, with_features

W, Q, H, DC = 3, 4, 32, DV + DA


def cfg(**kw) -> QFormerConfig:
    base = dict(video_dim=DV, audio_dim=DA, slot_tokens=L, llm_dim=16, hidden=H, heads=4,
                layers=2, queries=(Q,), window_slots=(W,), ffn_dim=64, causal_heads=2)
    return QFormerConfig(**{**base, **kw})


def model(seed: int = 0, **kw) -> WindowedQFormer:
    torch.manual_seed(seed)
    return WindowedQFormer(cfg(**kw)).eval()


def test_shapes_lengths_and_padding_windows_are_zero():
    m, batch = model(), make_batch([7, 3])
    out = m(batch)
    assert out.embeds.shape == (2, 3 * Q, 16)
    assert out.lengths.tolist() == [12, 4] and out.lengths.dtype == torch.long
    assert [m.tokens_for(7), m.tokens_for(3), m.tokens_for(6)] == [12, 4, 8]
    assert torch.all(out.embeds[1, 4:] == 0)
    assert torch.all(out.embeds[0].abs().sum(-1) > 0)
    assert torch.all(out.embeds[1, :4].abs().sum(-1) > 0)
    assert out.aux_loss.shape == () and out.aux_loss.item() == 0.0


def _causal_outputs(compat: bool, x: torch.Tensor, causal: bool = True) -> torch.Tensor:
    torch.manual_seed(0)
    layer = QFormerLayer(cfg(causal=causal, causal_compat=compat)).eval()
    slot_ids = torch.arange(W).repeat_interleave(L)                  # (W*L,)
    valid = torch.ones(1, W * L, dtype=torch.bool)
    return layer.attend_inputs(x, frame_block_mask(slot_ids, valid, compat))


def test_causal_module_sees_only_itself_and_earlier_slots():
    x = torch.randn(1, W * L, DC)
    later = x.clone()
    later[:, 2 * L:] += torch.randn(1, L, DC)                        # perturb slot 2
    earlier = x.clone()
    earlier[:, :L] += torch.randn(1, L, DC)                          # perturb slot 0
    a, b = _causal_outputs(False, x), _causal_outputs(False, later)
    torch.testing.assert_close(a[:, :2 * L], b[:, :2 * L], atol=1e-6, rtol=0)
    c = _causal_outputs(False, earlier)
    assert (a[:, L:] - c[:, L:]).abs().amax() > 1e-3                 # later slots see slot 0
    # compat (released code): itself and LATER slots — the opposite direction.
    a, c = _causal_outputs(True, x), _causal_outputs(True, earlier)
    torch.testing.assert_close(a[:, L:], c[:, L:], atol=1e-6, rtol=0)
    b = _causal_outputs(True, later)
    assert (a[:, :2 * L] - b[:, :2 * L]).abs().amax() > 1e-3
    torch.testing.assert_close(_causal_outputs(False, x, causal=False), x)  # module off


INTERLEAVE = dict(stream_fusion="interleave", slot_tokens=NV + F, video_tokens=NV)


@pytest.mark.parametrize("fusion", [{}, INTERLEAVE], ids=["concat", "interleave"])
def test_perturbing_a_frame_leaves_earlier_windows_unchanged(fusion):
    batch = make_batch([9])
    moved = batch.features.clone()
    moved[0, 7] += torch.randn(L, DC)                                # slot 7 = window 2
    for compat in (False, True):
        m = model(causal_compat=compat, **fusion)
        a, b = m(batch).embeds, m(with_features(batch, moved)).embeds
        torch.testing.assert_close(a[0, :2 * Q], b[0, :2 * Q], atol=1e-6, rtol=0)
        assert (a[0, 2 * Q:] - b[0, 2 * Q:]).abs().amax() > 1e-4


def test_block_mask_excludes_padding_keys_and_keeps_diagonal():
    slot_ids = torch.arange(2).repeat_interleave(2)                  # slots 0,0,1,1
    valid = torch.tensor([[True, False, True, True]])
    m = frame_block_mask(slot_ids, valid)[0]
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 1], [1, 0, 1, 1]]).bool()
    assert torch.equal(m, expected)


def test_windows_are_independent_and_clip_level_mixes_everything():
    batch = make_batch([7, 3])
    moved = batch.features.clone()
    moved[0, 4] += torch.randn(L, DC)                                # slot 4 = window 1
    m = model()
    a, b = m(batch).embeds, m(with_features(batch, moved)).embeds
    torch.testing.assert_close(a[0, :Q], b[0, :Q], atol=1e-6, rtol=0)
    torch.testing.assert_close(a[0, 2 * Q:], b[0, 2 * Q:], atol=1e-6, rtol=0)
    torch.testing.assert_close(a[1], b[1], atol=1e-6, rtol=0)
    assert (a[0, Q:2 * Q] - b[0, Q:2 * Q]).abs().amax(-1).min() > 1e-5
    clip = model(window_slots=(0,), max_slots=16)
    a, b = clip(batch).embeds, clip(with_features(batch, moved)).embeds
    assert a.shape == (2, Q, 16)
    assert clip(batch).lengths.tolist() == [Q, Q] and clip.tokens_for(7) == Q
    assert (a[0] - b[0]).abs().amax(-1).min() > 1e-5                 # every token changes
    with pytest.raises(ValueError, match="max_slots"):
        model(window_slots=(0,), max_slots=4)(batch)


@pytest.mark.parametrize("fusion", [{}, INTERLEAVE], ids=["concat", "interleave"])
def test_masked_tokens_are_ignored_unless_compat(fusion):
    batch = make_batch([7, 3])
    # Noise in every dim a mask hides: a masked position, and a real position's other stream.
    hidden = torch.cat([~batch.video_mask[..., None].expand(-1, -1, -1, DV),
                        ~batch.audio_mask[..., None].expand(-1, -1, -1, DA)], -1)
    noisy = batch.features + 100.0 * torch.randn_like(batch.features) * hidden
    for causal in (True, False):
        m = model(causal=causal, audio_proj_dim=6, **fusion)
        torch.testing.assert_close(m(batch).embeds, m(with_features(batch, noisy)).embeds,
                                   atol=1e-6, rtol=0)
    assert not torch.equal(noisy, batch.features)


def test_zeroed_modality_equals_the_no_modality_path():
    """A sample whose audio is absent gives the same tokens whatever sits in its audio dims,
    and the same as the same video with audio zeroed: the mask, not the values, decides."""
    batch = make_batch([4, 4], video=[True, True], audio=[True, False])
    m = model(audio_proj_dim=6)
    ref = m(batch).embeds[1]
    noisy = batch.features.clone()
    noisy[1, :, :, DV:] = torch.randn(4, L, DA)
    torch.testing.assert_close(m(with_features(batch, noisy)).embeds[1], ref, atol=1e-6, rtol=0)
    alone = make_batch([4], video=[True], audio=[False])
    alone = with_features(alone, batch.features[1:2])
    torch.testing.assert_close(m(alone).embeds[0], ref, atol=1e-5, rtol=0)


def test_interleave_gives_each_stream_positions_of_its_own():
    """concat: a position's normalised input mixes its visual token and audio frame, so the
    audio moves what the queries read of the frame. interleave: a slot is its NV visual
    tokens, then its F audio frames, and neither stream's positions depend on the other."""
    batch = make_batch([4, 2], video=[True, True], audio=[True, False])
    louder = batch.features.clone()
    louder[..., DV:] += torch.randn_like(louder[..., DV:]) * batch.audio_mask[..., None]
    m = model(**INTERLEAVE)
    x, valid = m.project_inputs(batch)
    assert x.shape == (2, 4, NV + F, DC)
    expected = torch.cat([batch.video_mask[:, :, :NV], batch.audio_mask[:, :, :F]], 2)
    assert torch.equal(valid, expected & batch.slot_mask[..., None])
    y, _ = m.project_inputs(with_features(batch, louder))
    torch.testing.assert_close(x[:, :, :NV], y[:, :, :NV], atol=0, rtol=0)  # frames untouched
    assert (x[0, :, NV:] - y[0, :, NV:]).abs().amax() > 1e-3
    x, _ = model().project_inputs(batch)
    y, _ = model().project_inputs(with_features(batch, louder))
    assert (x[0, :, :NV] - y[0, :, :NV]).abs().amax() > 1e-3         # concat mixes them
    out = m(batch)
    assert out.embeds.shape == (2, 2 * Q, 16) and out.lengths.tolist() == [2 * Q, Q]


def test_stream_queries_read_only_their_own_stream():
    """Half of a window's queries cross-attend to visual positions, half to audio ones; a
    window without audio still gives finite tokens (its audio queries read zero positions)."""
    from av_model.connectors.attention import _Recorder
    batch = make_batch([3, 3], video=[True, True], audio=[True, False])
    m = model(stream_queries=True, **INTERLEAVE)
    recs = [_Recorder(layer.cross_attn) for layer in m.qformer.layers]
    out = m(batch)
    assert torch.isfinite(out.embeds).all() and out.embeds.shape == (2, Q, 16)
    visual = (torch.arange(NV + F) < NV).repeat(W)                   # (W*L',)
    for rec in recs:
        w = rec.weights[0]                                           # (B*nW, Q, W*L')
        assert w[:, :Q // 2][..., ~visual].abs().max() == 0          # visual queries
        assert w[:, Q // 2:][..., visual].abs().max() == 0           # audio queries
        torch.testing.assert_close(w.sum(-1), torch.ones(2, Q))
    with pytest.raises(ConfigError) as err:
        cfg(stream_queries=True)
    assert err.value.field == "stream_queries"
    with pytest.raises(ConfigError) as err:
        cfg(stream_queries=True, queries=(3,), **INTERLEAVE)
    assert err.value.field == "queries"


def test_diversity_cosine_helper_and_aux_loss():
    same = torch.randn(1, 1, 8).expand(2, 3, 8)
    torch.testing.assert_close(mean_pairwise_cosine(same), torch.ones(2))
    ortho = torch.eye(4)[None]                                       # (1, Q=4, 4) orthogonal
    torch.testing.assert_close(mean_pairwise_cosine(ortho), torch.zeros(1))
    opposite = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])
    torch.testing.assert_close(mean_pairwise_cosine(opposite), torch.tensor([-1.0]))
    batch = make_batch([7, 3])
    assert model()(batch).aux_loss.item() == 0.0
    aux = model(diversity_weight=0.5)(batch).aux_loss
    assert aux.shape == () and aux.item() != 0.0
    assert -0.5 - 1e-6 <= aux.item() <= 0.5 + 1e-6


def test_gradients_flow_and_fully_padded_window_gives_no_nan():
    m = model(diversity_weight=0.1, audio_proj_dim=6).train()
    batch = make_batch([7, 1])                                       # sample 1: 2 padding windows
    batch.token_mask[1, 0] = False                                   # and no real token at all
    out = m(batch)
    assert torch.isfinite(out.embeds).all() and torch.isfinite(out.aux_loss)
    (out.embeds.sum() + out.aux_loss).backward()
    for name in ("queries.weight", "pos.weight", "audio_proj.weight", "out_proj.weight",
                 "qformer.layers.0.causal.q.weight", "qformer.layers.1.cross_attn.k.weight"):
        grad = dict(m.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_parity_with_transformers_blip2_qformer():
    """Causal module off, the Q-Former stack equals Blip2QFormerModel on shared weights."""
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    from av_model.convert import blip2_to_ours

    hf_cfg = Blip2QFormerConfig(hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, encoder_hidden_size=DC,
                                cross_attention_frequency=1, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0)
    torch.manual_seed(1)
    ref = Blip2QFormerModel(hf_cfg).eval()
    ours = model(causal=False)
    missing = ours.qformer.load_state_dict(blip2_to_ours(ref.state_dict()), strict=True)
    assert not missing.missing_keys
    queries = torch.randn(3, Q, H)
    ctx = torch.randn(3, 2 * L, DC)
    keys = torch.ones(3, 2 * L, dtype=torch.bool)
    keys[1, 7:] = False
    block = torch.ones(3, 2 * L, 2 * L, dtype=torch.bool)
    with torch.no_grad():
        want = ref(query_embeds=queries, encoder_hidden_states=ctx,
                   encoder_attention_mask=keys.long()).last_hidden_state
        got = ours.qformer(queries, ctx, keys, block)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kw, field", [
    (dict(hidden=30), "hidden"),
    (dict(queries=(0,)), "queries"),
    (dict(queries=(4, 2)), "queries"),
    (dict(window_slots=(-1,)), "window_slots"),
    (dict(causal=False, causal_compat=True), "causal_compat"),
    (dict(causal_heads=5), "causal_heads"),
    (dict(dropout=1.0), "dropout"),
    (dict(diversity_weight=-0.1), "diversity_weight"),
    (dict(stream_fusion="sum"), "stream_fusion"),
    (dict(stream_fusion="interleave"), "video_tokens"),
])
def test_config_validation_names_the_field(kw, field):
    with pytest.raises(ConfigError) as err:
        cfg(**kw)
    assert err.value.field == field
