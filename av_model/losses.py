"""Training losses: next-token cross-entropy on answer tokens, and the diversity penalty.

Why here and not in the model: the train loop reports the terms separately (MLflow shows
CE and diversity as their own curves), and evaluation computes the same CE per sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
IGNORE_INDEX = -100


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


def causal_lm_loss(logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """Shifted CE over positions whose label is not -100.

    reduction "mean": one scalar over all answer tokens of the batch; "sum" likewise summed;
    "none": per-sample mean (B,), for evaluation and per-sample weighting.
    """
    shift_labels = labels[:, 1:]                                     # (B, T-1)
    counted = shift_labels != IGNORE_INDEX
    if not counted.any():
        # No answer token (e.g. a padding batch that keeps distributed ranks in step): zero,
        # but through the logits so every trainable parameter still gets a (zero) gradient.
        zero = logits.sum() * 0.0
        return zero.expand(labels.shape[0]) if reduction == "none" else zero
    # Only answer positions go to fp32: a 150k vocabulary over every prompt position would
    # cost gigabytes per sample.
    picked = logits[:, :-1][counted].float()                         # (n, V)
    flat = logits.new_zeros(shift_labels.shape, dtype=torch.float32)  # (B, T-1)
    flat[counted] = F.cross_entropy(picked, shift_labels[counted], reduction="none")
    if reduction == "none":
        return flat.sum(1) / counted.sum(1).clamp(min=1)
    total = flat.sum()
    return total if reduction == "sum" else total / counted.sum().clamp(min=1)
