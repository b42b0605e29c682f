"""Causal windowed Q-Former: shapes, lengths, causality, window independence, masks, loss."""

import dataclasses

import pytest
import torch

from av_model.configlib import ConfigError
from av_model.connectors import CausalQFormer, QFormerConfig, QFormerLayer
from av_model.connectors.qformer import frame_block_mask, mean_pairwise_cosine
from av_model.sync import SyncedBatch

L, DC, W, Q, H = 5, 12, 3, 4, 32


def cfg(**kw) -> QFormerConfig:
    base = dict(input_dim=DC, llm_dim=16, hidden=H, heads=4, layers=2, queries=Q,
                window_slots=W)
    return QFormerConfig(**{**base, **kw})


def make_batch(num_slots: list[int], seed: int = 0) -> SyncedBatch:
    """Random features; slots past num_slots[i] are zero and masked, like synchronise()."""
    g = torch.Generator().manual_seed(seed)
    b, s = len(num_slots), max(num_slots)
    ns = torch.tensor(num_slots)
    slot_mask = torch.arange(s)[None] < ns[:, None]                  # (B, S)
    token_mask = slot_mask[..., None].expand(b, s, L).clone()        # (B, S, L)
    token_mask[:, :, L - 1] = False                                  # one padding token per slot
    feats = torch.randn(b, s, L, DC, generator=g) * slot_mask[..., None, None]
    return SyncedBatch(feats, slot_mask, token_mask, torch.ones(b, dtype=torch.bool),
                       torch.ones(b, dtype=torch.bool), ns)


def model(seed: int = 0, **kw) -> CausalQFormer:
    torch.manual_seed(seed)
    return CausalQFormer(cfg(**kw)).eval()


def with_features(batch: SyncedBatch, feats: torch.Tensor) -> SyncedBatch:
    return dataclasses.replace(batch, features=feats)


def test_shapes_lengths_and_padding_windows_are_zero():
    m, batch = model(), make_batch([7, 3])
    out = m(batch)
    assert out.embeds.shape == (2, 3 * Q, 16)
    assert out.lengths.tolist() == [12, 4]
    assert out.lengths.dtype == torch.long
    assert [m.tokens_for(7), m.tokens_for(3), m.tokens_for(6)] == [12, 4, 8]
    assert torch.all(out.embeds[1, 4:] == 0)
    assert torch.all(out.embeds[0].abs().sum(-1) > 0)
    assert torch.all(out.embeds[1, :4].abs().sum(-1) > 0)
    assert out.aux_loss.shape == () and out.aux_loss.item() == 0.0


def _causal_outputs(causal: bool, compat: bool, x: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)
    layer = QFormerLayer(cfg(causal=causal, causal_compat=compat)).eval()
    slot_ids = torch.arange(W).repeat_interleave(L)                  # (W*L,)
    valid = torch.ones(1, W * L, dtype=torch.bool)
    return layer.attend_inputs(x, frame_block_mask(slot_ids, valid, compat))


def test_causal_module_sees_only_itself_and_earlier_slots():
    x = torch.randn(1, W * L, H)
    later = x.clone()
    later[:, 2 * L:] += torch.randn(1, L, H)                         # perturb slot 2
    earlier = x.clone()
    earlier[:, :L] += torch.randn(1, L, H)                           # perturb slot 0
    a, b = _causal_outputs(True, False, x), _causal_outputs(True, False, later)
    torch.testing.assert_close(a[:, :2 * L], b[:, :2 * L], atol=1e-6, rtol=0)
    c = _causal_outputs(True, False, earlier)
    assert (a[:, L:] - c[:, L:]).abs().amax() > 1e-3                 # later slots see slot 0
    # compat (released code): itself and LATER slots — the opposite direction.
    a, c = _causal_outputs(True, True, x), _causal_outputs(True, True, earlier)
    torch.testing.assert_close(a[:, L:], c[:, L:], atol=1e-6, rtol=0)
    b = _causal_outputs(True, True, later)
    assert (a[:, :2 * L] - b[:, :2 * L]).abs().amax() > 1e-3
    # causal=False skips the module (identity); the same attention with no block mask leaks.
    torch.testing.assert_close(_causal_outputs(False, False, x), x)
    torch.manual_seed(0)
    layer = QFormerLayer(cfg()).eval()
    full = torch.ones(1, W * L, W * L, dtype=torch.bool)
    a, b = layer.attend_inputs(x, full), layer.attend_inputs(later, full)
    assert (a[:, :2 * L] - b[:, :2 * L]).abs().amax() > 1e-3


def test_block_mask_excludes_padding_keys_and_keeps_diagonal():
    slot_ids = torch.arange(2).repeat_interleave(2)                  # slots 0,0,1,1
    valid = torch.tensor([[True, False, True, True]])
    m = frame_block_mask(slot_ids, valid)[0]
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 1], [1, 0, 1, 1]]).bool()
    assert torch.equal(m, expected)


def test_windows_are_independent_and_clip_level_mixes_everything():
    batch = make_batch([7, 3])
    moved = batch.features.clone()
    moved[0, 4] += torch.randn(L, DC)                                # slot 4 = window 2
    m = model()
    a, b = m(batch).embeds, m(with_features(batch, moved)).embeds
    torch.testing.assert_close(a[0, :Q], b[0, :Q], atol=1e-6, rtol=0)
    torch.testing.assert_close(a[0, 2 * Q:], b[0, 2 * Q:], atol=1e-6, rtol=0)
    torch.testing.assert_close(a[1], b[1], atol=1e-6, rtol=0)
    assert (a[0, Q:2 * Q] - b[0, Q:2 * Q]).abs().amax(-1).min() > 1e-5
    clip = model(window_slots=0)
    a, b = clip(batch).embeds, clip(with_features(batch, moved)).embeds
    assert a.shape == (2, Q, 16)
    assert clip(batch).lengths.tolist() == [Q, Q] and clip.tokens_for(7) == Q
    assert (a[0] - b[0]).abs().amax(-1).min() > 1e-5                 # every token changes


def test_masked_tokens_are_ignored():
    batch = make_batch([7, 3])
    hidden = ~batch.token_mask[..., None]                           # (B, S, L, 1)
    noisy = batch.features + 100.0 * torch.randn_like(batch.features) * hidden
    for causal in (True, False):
        m = model(causal=causal)
        torch.testing.assert_close(m(batch).embeds, m(with_features(batch, noisy)).embeds,
                                   atol=1e-6, rtol=0)
    assert not torch.equal(noisy, batch.features)


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
    m = model(diversity_weight=0.1).train()
    batch = make_batch([7, 1])                                       # sample 1: 2 padding windows
    batch.token_mask[1, 0] = False                                   # and no real token at all
    out = m(batch)
    assert torch.isfinite(out.embeds).all() and torch.isfinite(out.aux_loss)
    (out.embeds.sum() + out.aux_loss).backward()
    for name in ("queries", "pos", "in_proj.0.weight", "out_proj.weight",
                 "layers.0.in_attn.q.weight", "layers.1.cross_attn.k.weight"):
        grad = dict(m.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


@pytest.mark.parametrize("kw, field", [
    (dict(hidden=30), "hidden"),
    (dict(queries=0), "queries"),
    (dict(window_slots=-1), "window_slots"),
    (dict(causal=False, causal_compat=True), "causal_compat"),
    (dict(dropout=1.0), "dropout"),
    (dict(diversity_weight=-0.1), "diversity_weight"),
])
def test_config_validation_names_the_field(kw, field):
    with pytest.raises(ConfigError) as err:
        cfg(**kw)
    assert err.value.field == field
