"""Attention over time: the recomputed weights are the ones the fused blocks use, the causal
map is lower-triangular per window, and cross-attention shares sum to 1 per window."""

import pytest
import torch

from av_model.connectors.attention import attention_over_time, attention_weights
from av_model.connectors.qformer import Attention
from tests.av_model.conn_helpers import make_batch
from tests.av_model.test_qformer import W, model


def test_recomputed_weights_reproduce_the_block_output():
    torch.manual_seed(0)
    attn = Attention(16, 4, 0.0, 1e-12, kv_dim=8).eval()
    x, ctx = torch.randn(2, 3, 16), torch.randn(2, 5, 8)
    mask = torch.tensor([[True] * 5, [True, True, False, False, True]])[:, None, :]  # (N, 1, Tk)
    p = attention_weights(attn, x, ctx, mask)                      # (N, h, Tq, Tk)
    v = attn.v(ctx).view(2, 5, 4, -1).transpose(1, 2)              # (N, h, Tk, D/h)
    y = (p @ v).transpose(1, 2).reshape(2, 3, 16)                  # (N, Tq, D)
    torch.testing.assert_close(attn.ln(x + attn.o(y)), attn(x, ctx, mask))
    assert p[1, :, :, 2:4].abs().max() == 0                        # masked keys get nothing


@pytest.mark.parametrize("causal", [True, False])
def test_slot_maps_shapes_causality_and_shares(causal):
    conn = model(causal=causal)
    batch = make_batch([7, 4])                                     # 7 slots: windows of 3
    maps = attention_over_time(conn, batch, fps=2.0)
    layers = len(conn.qformer.layers)
    assert maps.cross.shape == (2, layers, 7) and maps.window_slots == W and maps.slot_s == 0.5
    # Each full window's slot shares sum to 1 (the last window of sample 0 holds one slot).
    torch.testing.assert_close(maps.cross[0, :, :3].sum(-1), torch.ones(layers))
    torch.testing.assert_close(maps.cross[0, :, 6], torch.ones(layers))
    # Sample 1 has 4 slots: its padded slots 4..6 get no attention.
    assert maps.cross[1, :, 4:].abs().max() == 0
    if not causal:
        assert maps.causal is None
        return
    assert maps.causal.shape == (2, layers, 3, W, W)
    upper = torch.triu(torch.ones(W, W, dtype=torch.bool), diagonal=1)
    assert maps.causal[..., upper].abs().max() == 0                # slot j never sees j+1..
    assert maps.causal[0, :, 0, 0, 0].min() > 0.99                 # the first slot sees itself
    torch.testing.assert_close(maps.causal[0, :, 0].sum(-1), torch.ones(layers, W))
    assert conn.training is False
