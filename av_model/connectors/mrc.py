"""Multi-resolution causal Q-Former (video-SALMONN's MRC connector).

Why several resolutions: a 5 s window with 30 queries captures slow events and speech
context; a 0.5 s window with 3 queries keeps fine timing (what happened at the beep). Both
run the *same* Q-Former weights with their own learned queries. Because each resolution emits
the same number of tokens per second, their outputs line up token for token and are
concatenated on the feature dim, then projected to the LLM width (``WindowedQFormer`` does
the work; this class only enforces the equal-rate contract).
"""

from __future__ import annotations

from fractions import Fraction

from av_model.configlib import check
from av_model.connectors.qformer import QFormerConfig, WindowedQFormer


def check_equal_rates(cfg: QFormerConfig) -> None:
    """Every resolution must emit the same tokens per slot, or tokens would not align."""
    check(len(cfg.queries) >= 2, "window_s", "mrc_qformer needs at least two resolutions")
    check(all(w > 0 for w in cfg.window_slots), "window_s",
          "mrc_qformer resolutions need finite windows")
    rates = {Fraction(q, w) for q, w in zip(cfg.queries, cfg.window_slots)}
    check(len(rates) == 1, "queries",
          f"each resolution must give the same tokens per second; queries {cfg.queries} "
          f"over windows of {cfg.window_slots} slots do not")


class MultiResQFormer(WindowedQFormer):
    """One Q-Former over several window sizes, outputs concatenated on the feature dim."""

    def __init__(self, cfg: QFormerConfig):
        check_equal_rates(cfg)
        super().__init__(cfg)
