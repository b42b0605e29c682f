"""What a windowed Q-Former attends to, over time, reduced to 0.5 s slots.

Why recompute: the attention blocks use fused SDPA, which never materialises the weights.
Forward hooks capture the inputs each block saw and redo softmax(q·kᵀ/√d) for inspection
only (notebooks, debugging), so training and serving keep the fused kernel.

Two views, per Q-Former layer:

- ``cross``: how the learned queries' cross-attention divides over the slots of each window
  (mean over heads and queries, summed over a slot's visual tokens and audio frames);
  each window's slots sum to 1.
- ``causal``: the FAVOR causal module's slot-to-slot attention inside each window (mean over
  heads and over a query slot's real positions, summed over the key slot's positions):
  lower-triangular when causal, because slot j only sees slots <= j.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from av_model.connectors.qformer import Attention, WindowedQFormer
from av_model.sync import SyncedBatch


def attention_weights(attn: Attention, x: Tensor, ctx: Tensor | None = None,
                      mask: Tensor | None = None) -> Tensor:
    """The probabilities ``attn(x, ctx, mask)`` uses: (N, heads, Tq, Tk)."""
    ctx = x if ctx is None else ctx
    n, tq, _ = x.shape
    tk = ctx.shape[1]
    q = attn.q(x).view(n, tq, attn.heads, -1).transpose(1, 2)      # (N, h, Tq, D/h)
    k = attn.k(ctx).view(n, tk, attn.heads, -1).transpose(1, 2)    # (N, h, Tk, D/h)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])      # (N, h, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None], float("-inf"))  # mask (N, Tq|1, Tk)
    return scores.softmax(dim=-1)


@dataclass
class AttentionOverTime:
    """Per-layer attention at slot granularity for one resolution of a Q-Former."""

    cross: Tensor          # (B, layers, S): query cross-attention share of each slot (0: padding)
    causal: Tensor | None  # (B, layers, nW, W, W): slot -> slot inside each window; None if off
    window_slots: int      # W, slots per window
    slot_s: float          # seconds per slot (1 / fps)


class _Recorder:
    """Forward hook that keeps the recomputed weights of every call of one block."""

    def __init__(self, attn: Attention):
        self.weights: list[Tensor] = []
        self.handle = attn.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module: Attention, args: tuple, kwargs: dict, output: Tensor) -> None:
        names = ("x", "ctx", "mask")
        given = {**dict(zip(names, args)), **{k: v for k, v in kwargs.items() if k in names}}
        self.weights.append(attention_weights(module, **given).mean(dim=1))  # (N, Tq, Tk)


@torch.no_grad()
def attention_over_time(connector: WindowedQFormer, batch: SyncedBatch, resolution: int = 0,
                        fps: float = 2.0) -> AttentionOverTime:
    """Run one resolution of ``connector`` on ``batch`` and return its attention over slots."""
    layers = connector.qformer.layers
    cross = [_Recorder(layer.cross_attn) for layer in layers]
    causal = [_Recorder(layer.causal) for layer in layers if layer.causal is not None]
    was_training = connector.training
    connector.eval()
    try:
        x, valid = connector.project_inputs(batch)                  # (B, S, L, Dc), (B, S, L)
        connector.encode_resolution(resolution, x, valid)
    finally:
        connector.train(was_training)
        for rec in cross + causal:
            rec.handle.remove()
    b, s, l, _ = x.shape
    w = connector.window_for(resolution, s)
    n_win = max(math.ceil(s / w), 1)
    pad = n_win * w - s
    shares = torch.stack([r.weights[0].mean(dim=1) for r in cross], 1)  # (B*nW, layers, W*L)
    shares = shares.reshape(b, n_win, len(cross), w, l).sum(-1)     # (B, nW, layers, W)
    shares = shares.permute(0, 2, 1, 3).reshape(b, len(cross), n_win * w)[..., :s]  # (B, layers, S)
    # A window of batch padding attends everywhere (the connector zeroes its output): drop it.
    shares = shares * batch.slot_mask[:, None, :].to(shares)
    maps = None
    if causal:
        real = torch.nn.functional.pad(valid, (0, 0, 0, pad)).reshape(b * n_win, w, l)  # (B*nW, W, L)
        maps = torch.stack([_slot_map(r.weights[0], real, w, l) for r in causal], 1)
        maps = maps.reshape(b, n_win, len(causal), w, w).transpose(1, 2)  # (B, layers, nW, W, W)
    return AttentionOverTime(shares, maps, w, 1.0 / fps)


def _slot_map(weights: Tensor, real: Tensor, w: int, l: int) -> Tensor:
    """(N, W*L, W*L) position weights → (N, W, W) slot weights, averaging real query rows."""
    per_slot = weights.reshape(-1, w, l, w, l).sum(-1)              # (N, W, L, W): keys per slot
    q = real.float()[..., None]                                     # (N, W, L, 1)
    return (per_slot * q).sum(2) / q.sum(2).clamp(min=1)            # (N, W, W)
