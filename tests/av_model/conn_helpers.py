"""Random slot-aligned batches shaped like ``synchronise`` output, for connector tests."""

import dataclasses

import torch

from av_model.sync import SyncedBatch

L, DV, DA = 5, 8, 4          # positions per slot, video dims, audio dims
NV, F = 4, 5                 # visual tokens per frame, audio frames per slot


def make_batch(num_slots: list[int], seed: int = 0, video: list[bool] | None = None,
               audio: list[bool] | None = None) -> SyncedBatch:
    """Visual tokens at positions < NV (first DV dims), audio at < F (last DA dims)."""
    g = torch.Generator().manual_seed(seed)
    b, s = len(num_slots), max(num_slots)
    video = video or [True] * b
    audio = audio or [True] * b
    ns = torch.tensor(num_slots)
    slot_mask = torch.arange(s)[None] < ns[:, None]                  # (B, S)
    vmask = torch.zeros(b, s, L, dtype=torch.bool)
    amask = torch.zeros(b, s, L, dtype=torch.bool)
    for i in range(b):
        vmask[i, :num_slots[i], :NV] = video[i]
        amask[i, :num_slots[i], :F] = audio[i]
    amask[:, :, F - 1] &= False                                      # one padding frame per slot
    feats = torch.randn(b, s, L, DV + DA, generator=g)
    feats[..., :DV] *= vmask[..., None]
    feats[..., DV:] *= amask[..., None]
    return SyncedBatch(feats, slot_mask, vmask | amask, vmask, amask,
                       torch.tensor(video), torch.tensor(audio), ns)


def with_features(batch: SyncedBatch, feats: torch.Tensor) -> SyncedBatch:
    return dataclasses.replace(batch, features=feats)
