"""Windowed (causal) Q-Former: FAVOR's connector, its clip-level baseline, and the core MRC uses.

Why windows: the LLM gets a fixed number of tokens per second (``queries`` per
``window_slots`` slots) whatever the clip length, and each window only sees its own slots,
so a long clip costs linear, not quadratic, attention.

The forward pass, on slot-aligned features (``SyncedBatch``, ``L`` positions per slot):

1. optional per-modality input projections (the released models map Whisper 1280 -> 768
   before concatenation); a modality's projection is zeroed where that modality is absent.
   ``stream_fusion``: "concat" (FAVOR, the released weights) puts a slot's visual token p and
   audio frame p at one position; "interleave" gives the slot's Nv visual tokens, then its F
   audio frames, positions of their own (the other stream's dims zero), so what a query reads
   of a frame never depends on the sound at that position;
2. LayerNorm over the concatenated features, cut into windows of ``window_slots`` slots, plus
   a learned position per token within the window (``window_slots * L`` rows);
3. Q-Former layers, BERT post-norm like BLIP-2's (so ``Blip2QFormerModel`` weights load 1:1):
   a. the FAVOR *causal attention module*: self-attention over the window's input features
      with a frame-level block mask (applied to the window inputs anew in every layer, as
      the released code does), so temporal order survives the set-like cross-attention;
   b. self-attention among the learned queries;
   c. cross-attention from the queries to the causal module's output (``stream_queries``,
      interleave only: the first half of each window's queries read visual positions, the
      second half audio positions; why: with one shared set, the fused Q-Former learnt to
      read only one stream in the synthetic benchmark, see benchmarks/RESULTS.md);
   d. a feed-forward block;
4. the query outputs of every resolution, concatenated on the feature dim, projected to the
   LLM width; windows past a sample's end are zeroed; optionally RMS-normalised to the LLM's
   embedding scale (``connector.output_norm``, off for the released models' weights).

Mask direction. Default (``causal_compat=False``): a token of slot ``j`` attends to tokens of
slots ``<= j`` -- itself and earlier frames, as the paper describes -- and never to padding.
The released FAVOR/video-SALMONN code built its mask with ``torch.triu`` on frame blocks,
which under Hugging Face's "1 = may attend" convention lets a slot see itself and *later*
slots, and it treated every position of a real slot as valid (padded audio frames
included). ``causal_compat=True`` reproduces both for checkpoint compatibility. The released
code also silently skipped the causal module unless the window length was a multiple of 32
tokens; we never skip it (``causal=False`` is the only way to turn it off).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from av_model.configlib import check
from av_model.connectors.base import Connector, ConnectorOutput
from av_model.losses import mean_pairwise_cosine
from av_model.sync import SyncedBatch

Tensor = torch.Tensor


@dataclass(frozen=True)
class QFormerConfig:
    """Sizes and switches of the windowed Q-Former (resolved from ``ConnectorConfig``)."""

    video_dim: int            # Dv: first Dv feature dims of the SyncedBatch
    audio_dim: int            # Da: the remaining feature dims
    slot_tokens: int          # L: positions per slot (max(Nv, audio frames per slot))
    llm_dim: int              # D_llm, the LLM embedding size
    hidden: int = 768
    heads: int = 12
    layers: int = 2
    # One entry per resolution: slots per window (stride = window; 10 = 5 s at 2 fps,
    # 0 = one window over the whole clip) and learned queries per window.
    window_slots: tuple[int, ...] = (10,)
    queries: tuple[int, ...] = (32,)
    max_slots: int = 256       # longest clip (slots) when a window spans the clip
    video_proj_dim: int = 0    # 0 = feed video features as they are
    audio_proj_dim: int = 0    # 0 = feed audio features as they are
    ffn_dim: int = 3072
    dropout: float = 0.0
    layer_norm_eps: float = 1e-12
    causal: bool = True          # run the FAVOR causal attention module in every layer
    causal_heads: int = 12       # heads of the causal module (it runs at the input width)
    causal_compat: bool = False  # released-code mask: later slots, padding positions valid
    diversity_weight: float = 0.0  # video-SALMONN diversity loss weight (0 = off)
    # How a slot's two streams meet (ConnectorConfig.stream_fusion): "concat" puts visual
    # token p and audio frame p of the slot at one position, on the feature dim (FAVOR);
    # "interleave" gives the slot's Nv visual tokens and then its audio frames positions of
    # their own (slot_tokens = Nv + frames per slot), the other stream's dims zero.
    stream_fusion: str = "concat"
    video_tokens: int = 0        # Nv, needed by "interleave"
    # interleave only: the first half of each window's queries cross-attend to the visual
    # positions only, the second half to the audio positions only (the causal module still
    # mixes the streams slot by slot before they read).
    stream_queries: bool = False

    def __post_init__(self) -> None:
        for name in ("video_dim", "audio_dim", "slot_tokens", "llm_dim", "hidden", "heads",
                     "layers", "max_slots", "ffn_dim", "causal_heads"):
            check(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        check(self.hidden % self.heads == 0, "hidden",
              f"must be divisible by heads ({self.heads}), got {self.hidden}")
        check(len(self.window_slots) == len(self.queries) and self.queries, "queries",
              f"needs one entry per window_slots entry, got {self.queries} "
              f"for {self.window_slots}")
        check(all(w >= 0 for w in self.window_slots), "window_slots", "must be >= 0")
        check(all(q > 0 for q in self.queries), "queries", "must be > 0")
        check(self.video_proj_dim >= 0 and self.audio_proj_dim >= 0, "audio_proj_dim",
              "must be >= 0")
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        check(self.diversity_weight >= 0.0, "diversity_weight", "must be >= 0")
        check(self.stream_fusion in ("concat", "interleave"), "stream_fusion",
              f"must be concat or interleave, got {self.stream_fusion!r}")
        check(self.stream_fusion == "concat" or 0 < self.video_tokens < self.slot_tokens,
              "video_tokens", f"interleave needs 0 < video_tokens < slot_tokens "
              f"({self.slot_tokens}), got {self.video_tokens}")
        check(not self.stream_queries or self.stream_fusion == "interleave", "stream_queries",
              "needs stream_fusion: interleave (each position holds one stream)")
        check(not self.stream_queries or all(q % 2 == 0 for q in self.queries), "queries",
              f"stream_queries splits each window's queries in two: need even counts, "
              f"got {self.queries}")
        check(self.causal or not self.causal_compat, "causal_compat",
              "only meaningful with causal=True")
        check(not self.causal or self.input_dim % self.causal_heads == 0, "causal_heads",
              f"input width {self.input_dim} must be divisible by causal_heads "
              f"({self.causal_heads})")

    @property
    def input_dim(self) -> int:
        """Dc: the width the Q-Former's keys, values and causal module see."""
        return (self.video_proj_dim or self.video_dim) + (self.audio_proj_dim or self.audio_dim)

    @property
    def positions(self) -> int:
        """Rows of the within-window position table (tokens of the largest window)."""
        return max(w or self.max_slots for w in self.window_slots) * self.slot_tokens


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
    """BERT-style attention block: SDPA, output projection, residual, post-LayerNorm."""

    def __init__(self, dim: int, heads: int, dropout: float, eps: float,
                 kv_dim: int | None = None):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.k, self.v = nn.Linear(kv_dim or dim, dim), nn.Linear(kv_dim or dim, dim)
        self.o, self.ln = nn.Linear(dim, dim), nn.LayerNorm(dim, eps=eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, ctx: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """x (N, Tq, D) attends to ctx (N, Tk, Dk) (x itself if None); mask (N, Tq|1, Tk)."""
        ctx = x if ctx is None else ctx
        n, tq, d = x.shape
        tk = ctx.shape[1]
        q = self.q(x).view(n, tq, self.heads, -1).transpose(1, 2)    # (N, h, Tq, D/h)
        k = self.k(ctx).view(n, tk, self.heads, -1).transpose(1, 2)  # (N, h, Tk, D/h)
        v = self.v(ctx).view(n, tk, self.heads, -1).transpose(1, 2)  # (N, h, Tk, D/h)
        m = None if mask is None else mask[:, None]                  # (N, 1, Tq|1, Tk)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=p)
        y = y.transpose(1, 2).reshape(n, tq, d)                      # (N, h, Tq, D/h) -> (N, Tq, D)
        return self.ln(x + self.drop(self.o(y)))


class QFormerLayer(nn.Module):
    """Causal input attention, query self-attention, cross-attention, FFN (post-norm)."""

    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        h, dc, eps = cfg.hidden, cfg.input_dim, cfg.layer_norm_eps
        self.causal = Attention(dc, cfg.causal_heads, cfg.dropout, eps) if cfg.causal else None
        self.self_attn = Attention(h, cfg.heads, cfg.dropout, eps)
        self.cross_attn = Attention(h, cfg.heads, cfg.dropout, eps, kv_dim=dc)
        self.ffn_in, self.ffn_out = nn.Linear(h, cfg.ffn_dim), nn.Linear(cfg.ffn_dim, h)
        self.ffn_ln, self.ffn_drop = nn.LayerNorm(h, eps=eps), nn.Dropout(cfg.dropout)

    def attend_inputs(self, x: Tensor, block_mask: Tensor) -> Tensor:
        """The FAVOR causal module on window inputs x (N, T, Dc); identity when off."""
        return x if self.causal is None else self.causal(x, mask=block_mask)

    def forward(self, queries: Tensor, x: Tensor, cross_mask: Tensor,
                block_mask: Tensor) -> Tensor:
        """queries (N, Q, H), window inputs x (N, T, Dc), cross_mask (N, Q|1, T) -> (N, Q, H)."""
        ctx = self.attend_inputs(x, block_mask)
        q = self.self_attn(queries)
        q = self.cross_attn(q, ctx, cross_mask)
        return self.ffn_ln(q + self.ffn_drop(self.ffn_out(F.gelu(self.ffn_in(q)))))


class QFormerStack(nn.Module):
    """Query LayerNorm + layers: the part shared by every window resolution."""

    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        self.query_ln = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(QFormerLayer(cfg) for _ in range(cfg.layers))

    def forward(self, queries: Tensor, x: Tensor, keys: Tensor, block_mask: Tensor,
                groups: Tensor | None = None) -> Tensor:
        """queries (N, Q, H) over windows x (N, T, Dc) with key mask (N, T) -> (N, Q, H);
        groups (Q, T), when given, limits each query to its stream's positions."""
        # A window with no real key (batch padding) may attend everywhere: finite, and its
        # output is zeroed by the connector.
        keys = keys | ~keys.any(dim=1, keepdim=True)
        mask = keys[:, None, :]                                      # (N, 1, T)
        if groups is not None:
            mask = mask & groups[None]                               # (N, Q, T)
            # A stream absent from the window: its queries read its (zero) positions, a
            # constant "nothing here", rather than an empty softmax.
            mask = mask | (~mask.any(-1, keepdim=True) & groups[None])
        q = self.query_ln(queries)
        for layer in self.layers:
            q = layer(q, x, mask, block_mask)
        return q


class Table(nn.Module):
    """A learned (rows, dim) table read by row ranges.

    Why a module: DeepSpeed ZeRO-3 re-gathers a partitioned parameter for backward through
    the hooks of the module that *returns tensors* using it; the connector returns a
    dataclass, so its own parameters would stay partitioned in backward.
    """

    def __init__(self, rows: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(rows, dim) * 0.02)

    def forward(self, start: int, count: int) -> Tensor:
        return self.weight[start:start + count]                     # (count, dim)


def _optional_proj(dim_in: int, dim_out: int) -> nn.Module:
    return nn.Linear(dim_in, dim_out) if dim_out else nn.Identity()


class WindowedQFormer(Connector):
    """``queries[r]`` LLM tokens per window of ``window_slots[r]`` slots, for each resolution r."""

    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        self.cfg = cfg
        self.video_proj = _optional_proj(cfg.video_dim, cfg.video_proj_dim)
        self.audio_proj = _optional_proj(cfg.audio_dim, cfg.audio_proj_dim)
        self.ln_in = nn.LayerNorm(cfg.input_dim)
        self.pos = Table(cfg.positions, cfg.input_dim)
        # Every resolution's learned queries in one (sum Q_r, H) table.
        self.queries = Table(sum(cfg.queries), cfg.hidden)
        self.query_offsets = [sum(cfg.queries[:r]) for r in range(len(cfg.queries))]
        self.qformer = QFormerStack(cfg)
        self.out_proj = nn.Linear(cfg.hidden * len(cfg.queries), cfg.llm_dim)

    def window_for(self, r: int, num_slots: int) -> int:
        """Slots per window of resolution r: configured, or the whole clip when 0."""
        w = self.cfg.window_slots[r] or max(num_slots, 1)
        if w * self.cfg.slot_tokens > self.cfg.positions:
            raise ValueError(f"clip of {num_slots} slots exceeds max_slots={self.cfg.max_slots}")
        return w

    def _tokens(self, r: int, num_slots: int) -> int:
        w = self.window_for(r, num_slots)  # raises for a clip longer than max_slots
        return math.ceil(num_slots / w) * self.cfg.queries[r]

    def tokens_for(self, num_slots: int) -> int:
        return max(self._tokens(r, num_slots) for r in range(len(self.cfg.queries)))

    def project_inputs(self, batch: SyncedBatch) -> tuple[Tensor, Tensor]:
        """Steps 1-2 before windowing -> x (B, S, L', Dc) normalised, valid (B, S, L');
        L' = L for concat, Nv + F for interleave (each position then holds one stream)."""
        cfg, feats = self.cfg, batch.features
        dv = cfg.video_dim
        vmask, amask = batch.video_mask, batch.audio_mask             # (B, S, L) each
        if cfg.stream_fusion == "interleave":
            nv, na = cfg.video_tokens, cfg.slot_tokens - cfg.video_tokens
            feats = torch.cat([feats[:, :, :nv], feats[:, :, :na]], dim=2)  # (B, S, Nv+F, Dv+Da)
            no_v, no_a = torch.zeros_like(vmask[:, :, :nv]), torch.zeros_like(amask[:, :, :na])
            vmask, amask = (torch.cat([vmask[:, :, :nv], no_a], dim=2),   # (B, S, Nv+F)
                            torch.cat([no_v, amask[:, :, :na]], dim=2))
        vid = self.video_proj(feats[..., :dv]) * vmask[..., None]
        aud = self.audio_proj(feats[..., dv:]) * amask[..., None]
        x = self.ln_in(torch.cat([vid, aud], dim=-1))                # (B, S, L', Dc)
        slots = batch.slot_mask[..., None]                           # (B, S, 1)
        valid = slots.expand_as(vmask) if cfg.causal_compat else \
            (vmask | amask) & slots                                  # (B, S, L')
        return x, valid

    def encode_resolution(self, r: int, x: Tensor, valid: Tensor) -> tuple[Tensor, int]:
        """One resolution over x (B, S, L, Dc) -> query outputs (B*nW, Q_r, H) and nW."""
        b, s, l, dc = x.shape
        w = self.window_for(r, s)
        n_win = max(math.ceil(s / w), 1)
        pad = n_win * w - s
        x = F.pad(x, (0, 0, 0, 0, 0, pad)).reshape(b * n_win, w * l, dc)  # (B*nW, W*L, Dc)
        valid = F.pad(valid, (0, 0, 0, pad)).reshape(b * n_win, w * l)     # (B*nW, W*L)
        x = x + self.pos(0, w * l)
        slot_ids = torch.arange(w, device=x.device).repeat_interleave(l)  # (W*L,)
        block = frame_block_mask(slot_ids, valid, self.cfg.causal_compat)  # (B*nW, T, T)
        off, n_q = self.query_offsets[r], self.cfg.queries[r]
        q = self.queries(off, n_q).expand(b * n_win, -1, -1)         # (B*nW, Q, H)
        groups = None
        if self.cfg.stream_queries:
            visual = (torch.arange(l, device=x.device) < self.cfg.video_tokens).repeat(w)  # (W*L,)
            reads_video = torch.arange(n_q, device=x.device) < n_q // 2  # (Q,)
            groups = reads_video[:, None] == visual[None, :]          # (Q, W*L)
        return self.qformer(q, x, valid, block, groups), n_win

    def forward(self, batch: SyncedBatch) -> ConnectorOutput:
        """1-2. project, normalise  3. per resolution: windows, Q-Former  4. concat, project."""
        cfg, b = self.cfg, batch.features.shape[0]
        x, valid = self.project_inputs(batch)
        n_out = self.tokens_for(x.shape[1])
        outs, sims = [], []
        for r, q_r in enumerate(cfg.queries):
            q, n_win = self.encode_resolution(r, x, valid)           # (B*nW, Q_r, H)
            w = self.window_for(r, x.shape[1])
            real = torch.ceil(batch.num_slots.to(x.device).float() / w).long()  # (B,)
            win_mask = torch.arange(n_win, device=x.device)[None] < real[:, None]  # (B, nW)
            tok = q.reshape(b, n_win * q_r, -1) * win_mask.repeat_interleave(q_r, 1)[..., None]
            outs.append(F.pad(tok, (0, 0, 0, n_out - n_win * q_r)))  # (B, N, H)
            if cfg.diversity_weight:
                sims.append(_masked_mean(mean_pairwise_cosine(q), win_mask.reshape(-1)))
        embeds = self.out_proj(torch.cat(outs, dim=-1))              # (B, N, R*H) -> (B, N, D)
        lengths = torch.tensor([self.tokens_for(int(n)) for n in batch.num_slots],
                               device=x.device)
        embeds = embeds * (torch.arange(n_out, device=x.device)[None] < lengths[:, None])[..., None]
        aux = cfg.diversity_weight * torch.stack(sims).mean() if sims else embeds.new_zeros(())
        return ConnectorOutput(self.finish(embeds), lengths, aux)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)
