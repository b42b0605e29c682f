"""Linear (Audio-Visual LLM) and multi-resolution (video-SALMONN) connectors."""

import pytest
import torch

from av_model.configlib import ConfigError
from av_model.connectors import LinearConfig, LinearConnector, MultiResQFormer, QFormerConfig
from tests.av_model.conn_helpers import DA, DV, L, NV, make_batch, with_features


def linear(seed=0, cls=True) -> LinearConnector:
    torch.manual_seed(seed)
    return LinearConnector(LinearConfig(DV, DA, NV, llm_dim=16, visual_cls=cls)).eval()


@pytest.mark.parametrize("cls", [True, False])
def test_linear_layout_lengths_and_absent_modalities(cls):
    m = linear(cls=cls)
    batch = make_batch([5, 2, 3], video=[True, True, False], audio=[True, False, True])
    out = m(batch)
    p = NV - 1 if cls else NV
    assert out.embeds.shape == (3, p + 2 * 5, 16)
    assert out.lengths.tolist() == [p + 10, p + 4, p + 6]
    assert [m.tokens_for(n) for n in (5, 2, 3)] == out.lengths.tolist()
    e = out.embeds
    assert torch.all(e[0].abs().sum(-1) > 0)                         # everything present
    assert torch.all(e[1, p + 1:p + 4:2] == 0)                       # no audio: audio tokens zero
    assert torch.all(e[1, p:p + 4:2].abs().sum(-1) > 0)              # temporal tokens present
    assert torch.all(e[2, :p] == 0) and torch.all(e[2, p:p + 6:2] == 0)  # no video
    assert torch.all(e[1, p + 4:] == 0) and torch.all(e[2, p + 6:] == 0)  # padding


def test_linear_keeps_time_order_and_ignores_masked_values():
    m = linear()
    batch = make_batch([4])
    moved = batch.features.clone()
    moved[0, 2, 0, :DV] += 5.0                                       # frame 2's [CLS]
    a, b = m(batch).embeds[0], m(with_features(batch, moved)).embeds[0]
    changed = ((a - b).abs().sum(-1) > 1e-6).nonzero().flatten().tolist()
    assert changed == [NV - 1 + 2 * 2]                               # only temporal token 2
    noisy = batch.features + 50 * torch.randn_like(batch.features) * ~batch.token_mask[..., None]
    torch.testing.assert_close(m(with_features(batch, noisy)).embeds[0], a)


def mrc(**kw) -> MultiResQFormer:
    base = dict(video_dim=DV, audio_dim=DA, slot_tokens=L, llm_dim=16, hidden=32, heads=4,
                layers=1, ffn_dim=64, causal_heads=2, window_slots=(4, 1), queries=(8, 2))
    torch.manual_seed(0)
    return MultiResQFormer(QFormerConfig(**{**base, **kw})).eval()


def test_mrc_aligns_resolutions_and_pads_the_coarse_window():
    m = mrc(diversity_weight=0.1)
    batch = make_batch([8, 5])
    out = m(batch)
    assert out.lengths.tolist() == [16, 16] == [m.tokens_for(8), m.tokens_for(5)]
    assert m.tokens_for(6) == 16 and m.tokens_for(4) == 8
    assert out.embeds.shape == (2, 16, 16)
    assert torch.isfinite(out.aux_loss) and out.aux_loss.item() != 0.0
    # Fine resolution: slot 6 only moves tokens 12-13 of its block; coarse: window 1.
    moved = batch.features.clone()
    moved[0, 6] += torch.randn(L, DV + DA)
    a, b = m(batch).embeds[0], m(with_features(batch, moved)).embeds[0]
    changed = ((a - b).abs().sum(-1) > 1e-6).nonzero().flatten().tolist()
    assert changed == list(range(8, 16))                             # window 1 = tokens 8..15
    assert m.out_proj.in_features == 2 * 32


def test_mrc_rejects_unequal_token_rates():
    with pytest.raises(ConfigError, match="same tokens per second"):
        mrc(queries=(8, 3))
    with pytest.raises(ConfigError, match="two resolutions"):
        mrc(window_slots=(4,), queries=(8,))
