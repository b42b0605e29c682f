"""Windowed causal Q-Former (FAVOR) and its clip-level baseline (Video-LLaMA style).

Why windows: the LLM gets a fixed number of tokens per second (``queries`` per
``window_slots`` slots) whatever the clip length, and each window only sees its own slots,
so a long clip costs linear, not quadratic, attention.

Each layer runs, on one window (``W`` slots x ``L`` tokens of slot-aligned features):

1. the FAVOR *causal attention module*: self-attention over the window's input features with
   a frame-level block mask, so temporal order survives the set-like cross-attention;
2. self-attention among the learned queries;
3. cross-attention from the queries to the (updated) window inputs;
4. a feed-forward block.

Mask direction. Default (``causal_compat=False``): a token of slot ``j`` attends to tokens
of slots ``<= j`` -- itself and earlier frames, as the paper describes. The released FAVOR
code built its mask with ``triu``, which under Hugging Face's "1 = may attend" convention lets
a slot see itself and *later* slots; ``causal_compat=True`` reproduces that for checkpoint
compatibility. The released code also silently skipped the causal module unless the window
length was a multiple of 32; we never skip it (``causal=False`` is the only way to turn it
off). ``window_slots=0`` means one window over the whole clip: the clip-level baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from av_model.configlib import check
from av_model.connectors.base import Connector, ConnectorOutput
from av_model.sync import SyncedBatch

Tensor = torch.Tensor


@dataclass(frozen=True)
class QFormerConfig:
    """Sizes and switches of the (causal) windowed Q-Former."""

    input_dim: int            # Dc = Dv + Da, the SyncedBatch feature size
    llm_dim: int              # D_llm, the LLM embedding size
    hidden: int = 768
    heads: int = 12
    layers: int = 2
    queries: int = 32         # learned queries per window = LLM tokens per window
    # Slots per window (stride = window); 10 = 5 s at 2 fps. 0 = one window over the clip.
    window_slots: int = 10
    # Position-embedding table size when window_slots == 0 (longest clip in slots).
    max_slots: int = 256
    ffn_mult: int = 4
    dropout: float = 0.0
    causal: bool = True          # run the FAVOR causal attention module in every layer
    causal_compat: bool = False  # released-code mask direction (itself and later slots)
    diversity_weight: float = 0.0  # video-SALMONN diversity loss weight (0 = off)

    def __post_init__(self) -> None:
        for name in ("input_dim", "llm_dim", "hidden", "heads", "layers", "queries",
                     "max_slots", "ffn_mult"):
            check(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        check(self.hidden % self.heads == 0, "hidden",
              f"must be divisible by heads ({self.heads}), got {self.hidden}")
        check(self.window_slots >= 0, "window_slots", f"must be >= 0, got {self.window_slots}")
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        check(self.diversity_weight >= 0.0, "diversity_weight",
              f"must be >= 0, got {self.diversity_weight}")
        check(self.causal or not self.causal_compat, "causal_compat",
              "only meaningful with causal=True")

    @property
    def positions(self) -> int:
        """Rows of the within-window position table."""
        return self.window_slots or self.max_slots


def frame_block_mask(slot_ids: Tensor, valid: Tensor, compat: bool = False) -> Tensor:
    """Boolean ``(N, T, T)`` "may attend" mask at slot granularity.

    slot_ids (T,) gives each position's slot within the window; valid (N, T) marks real tokens.
    Default: query slot j sees key slots <= j; compat: key slots >= j (released FAVOR code).
    Padding keys are never seen; the diagonal is always allowed so padding rows are not
    empty (their outputs are ignored downstream) and softmax never produces NaN.
    """
    q, k = slot_ids[:, None], slot_ids[None, :]                    # (T, 1), (1, T)
    order = (k >= q) if compat else (k <= q)                       # (T, T)
    allowed = order[None] & valid[:, None, :]                      # (N, T, T)
    eye = torch.eye(slot_ids.numel(), dtype=torch.bool, device=valid.device)
    return allowed | eye


class Attention(nn.Module):
    """Multi-head attention on top of SDPA with a boolean "may attend" mask."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q, self.k, self.v = (nn.Linear(hidden, hidden) for _ in range(3))
        self.o = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, ctx: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (N, Tq, H) attends to ctx (N, Tk, H); mask (N, Tq, Tk) or (N, 1, Tk) bool."""
        n, tq, h = x.shape
        tk = ctx.shape[1]
        q = self.q(x).view(n, tq, self.heads, -1).transpose(1, 2)    # (N, h, Tq, H/h)
        k = self.k(ctx).view(n, tk, self.heads, -1).transpose(1, 2)  # (N, h, Tk, H/h)
        v = self.v(ctx).view(n, tk, self.heads, -1).transpose(1, 2)  # (N, h, Tk, H/h)
        m = None if mask is None else mask[:, None]                  # (N, 1, Tq|1, Tk)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=p)
        return self.o(y.transpose(1, 2).reshape(n, tq, h))           # (N, h, Tq, H/h) -> (N, Tq, H)


class QFormerLayer(nn.Module):
    """Causal input self-attention, query self-attention, cross-attention, FFN (pre-norm)."""

    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        h = cfg.hidden
        self.causal = cfg.causal
        if cfg.causal:
            self.ln_in = nn.LayerNorm(h)
            self.in_attn = Attention(h, cfg.heads, cfg.dropout)
        self.ln_q, self.self_attn = nn.LayerNorm(h), Attention(h, cfg.heads, cfg.dropout)
        self.ln_x, self.ln_kv = nn.LayerNorm(h), nn.LayerNorm(h)
        self.cross_attn = Attention(h, cfg.heads, cfg.dropout)
        self.ln_ffn = nn.LayerNorm(h)
        self.ffn = nn.Sequential(nn.Linear(h, cfg.ffn_mult * h), nn.GELU(),
                                 nn.Linear(cfg.ffn_mult * h, h), nn.Dropout(cfg.dropout))

    def attend_inputs(self, x: Tensor, block_mask: Tensor) -> Tensor:
        """The FAVOR causal module on window inputs x (N, T, H); identity when causal=False."""
        if not self.causal:
            return x
        return x + self.in_attn(self.ln_in(x), self.ln_in(x), block_mask)

    def forward(self, queries: Tensor, x: Tensor, valid: Tensor,
                block_mask: Tensor) -> tuple[Tensor, Tensor]:
        """queries (N, Q, H), x (N, T, H), valid (N, T) -> updated (queries, x)."""
        x = self.attend_inputs(x, block_mask)
        q = queries + self.self_attn(self.ln_q(queries), self.ln_q(queries))
        # A window with no real token (batch padding) may attend everywhere: finite, and
        # its output is zeroed by the connector.
        keys = valid | ~valid.any(dim=1, keepdim=True)               # (N, T)
        q = q + self.cross_attn(self.ln_x(q), self.ln_kv(x), keys[:, None, :])
        q = q + self.ffn(self.ln_ffn(q))
        return q, x


def mean_pairwise_cosine(z: Tensor) -> Tensor:
    """(N, Q, H) -> (N,): mean cosine similarity over distinct query pairs of each window.

    Why: video-SALMONN's diversity loss pushes the queries of a window apart so they do
    not collapse onto the same content; 0 for a single query (no pairs).
    """
    q = z.shape[1]
    if q < 2:
        return z.new_zeros(z.shape[0])
    u = F.normalize(z, dim=-1)
    gram = u @ u.transpose(1, 2)                                     # (N, Q, Q)
    off_diag = gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(-1)
    return off_diag / (q * (q - 1))


class CausalQFormer(Connector):
    """Windowed (causal) Q-Former: ``queries`` LLM tokens per window of ``window_slots``."""

    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        self.in_proj = nn.Sequential(nn.Linear(cfg.input_dim, h), nn.LayerNorm(h))
        self.pos = nn.Parameter(torch.randn(cfg.positions, h) * 0.02)
        self.queries = nn.Parameter(torch.randn(cfg.queries, h) * 0.02)
        self.layers = nn.ModuleList(QFormerLayer(cfg) for _ in range(cfg.layers))
        self.ln_out = nn.LayerNorm(h)
        self.out_proj = nn.Linear(h, cfg.llm_dim)

    def window_for(self, num_slots: int) -> int:
        """Slots per window: the configured size, or the whole batch for the clip level."""
        w = self.cfg.window_slots or num_slots
        if w > self.cfg.positions:
            raise ValueError(f"clip of {num_slots} slots exceeds max_slots={self.cfg.max_slots}")
        return max(w, 1)

    def tokens_for(self, num_slots: int) -> int:
        w = self.cfg.window_slots or max(num_slots, 1)
        return math.ceil(num_slots / w) * self.cfg.queries

    def _windows(self, batch: SyncedBatch) -> tuple[Tensor, Tensor, int, int]:
        """Project, add positions, cut into windows -> x (B*nW, W*L, H), valid, W, nW."""
        feats, b = batch.features, batch.features.shape[0]
        s, l = feats.shape[1], feats.shape[2]
        w = self.window_for(s)
        n_win = max(math.ceil(s / w), 1)
        pad = n_win * w - s
        x = self.in_proj(feats)                                      # (B, S, L, H)
        x = F.pad(x, (0, 0, 0, 0, 0, pad))                           # (B, nW*W, L, H)
        valid = batch.token_mask & batch.slot_mask[..., None]        # (B, S, L)
        valid = F.pad(valid, (0, 0, 0, pad))                         # (B, nW*W, L)
        x = x.view(b, n_win, w, l, -1) + self.pos[:w].view(1, 1, w, 1, -1)  # (B, nW, W, L, H)
        x = x.reshape(b * n_win, w * l, -1)                          # (B*nW, W*L, H)
        valid = valid.reshape(b * n_win, w * l)                      # (B*nW, W*L)
        return x, valid, w, n_win

    def forward(self, batch: SyncedBatch) -> ConnectorOutput:
        """1. windows  2. layers  3. project  4. zero padding windows  5. diversity loss."""
        cfg, b = self.cfg, batch.features.shape[0]
        x, valid, w, n_win = self._windows(batch)
        l = x.shape[1] // w
        slot_ids = torch.arange(w, device=x.device).repeat_interleave(l)  # (W*L,)
        block = frame_block_mask(slot_ids, valid, cfg.causal_compat)      # (B*nW, T, T)
        q = self.queries.expand(b * n_win, -1, -1)                   # (B*nW, Q, H)
        for layer in self.layers:
            q, x = layer(q, x, valid, block)
        q = self.ln_out(q)
        real_win = torch.ceil(batch.num_slots.to(x.device).float() / w).long()  # (B,)
        win_mask = torch.arange(n_win, device=x.device)[None] < real_win[:, None]  # (B, nW)
        out = self.out_proj(q).view(b, n_win * cfg.queries, -1)      # (B*nW, Q, D) -> (B, nW*Q, D)
        tok_mask = win_mask.repeat_interleave(cfg.queries, dim=1)    # (B, nW*Q)
        embeds = out * tok_mask[..., None].to(out.dtype)
        return ConnectorOutput(embeds, real_win * cfg.queries,
                               self._aux_loss(q, win_mask.reshape(-1)))

    def _aux_loss(self, q: Tensor, real: Tensor) -> Tensor:
        """diversity_weight x mean over real windows of the query cosine similarity."""
        if self.cfg.diversity_weight == 0.0:
            return q.new_zeros(())
        sim = mean_pairwise_cosine(q)                                # (B*nW,)
        mean = (sim * real).sum() / real.sum().clamp(min=1)
        return self.cfg.diversity_weight * mean
