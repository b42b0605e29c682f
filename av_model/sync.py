"""FAVOR temporal synchronisation ("early alignment") of visual tokens and audio frames.

Why: FAVOR's causal Q-Former attends over *time slots*, each holding what was seen and what
was heard during that slot. Grouping both streams on one slot axis before the connector
lets a frame-level causal mask be one block mask, and lets a missing modality be zeros plus a
mask instead of a different code path.

Contract (per sample i; ``F = frames_per_slot(fps, audio_rate)``, 50 Hz / 2 fps = 25):

- Video ``(T_i, Nv, Dv)``: frame k is the frame shown at the centre of slot
  ``[k / fps, (k + 1) / fps)``. Audio ``(A_i, Da)`` at ``audio_rate`` Hz. ``None`` or a
  zero-length tensor means the modality is absent.
- Slot k pairs visual frame k with audio frames ``[k*F, (k+1)*F)``; the last slot's audio is
  zero-padded to F.
- ``L = max(Nv, F)``. In a slot, visual tokens sit at positions ``0..Nv-1`` of the first Dv
  feature dims and audio frames at positions ``0..F-1`` of the last Da dims; all else is zero.
  ``token_mask[i, k, p]`` is True where position p holds a real visual token OR a real
  (non-padding) audio frame of slot k.
- Slots ``S_i``: both modalities ``max(T_i, ceil(A_i / F))`` (the short side is padded with
  masked zeros, never truncated); video only ``T_i``; audio only ``ceil(A_i / F)``; neither is
  a ValueError.
- An image (``image[i]``, video ``(1, Nv, Dv)``) is a one-frame video repeated over the audio:
  every slot gets its tokens and ``S_i = max(1, ceil(A_i / F))``.
- Batch: ``S = max S_i``; padded slots have ``slot_mask`` False and zero features.
- dtype/device follow the first non-None video tensor (else the first audio tensor); the other
  stream is cast to it. When a modality is absent from the whole batch, ``video_dim``,
  ``num_visual_tokens`` / ``audio_dim`` keep the output shape fixed (``Dv + Da`` always
  present); a ValueError names the argument that could not be inferred.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass
class SyncedBatch:
    """Slot-aligned audio-visual features for a batch (see the module docstring)."""

    features: Tensor     # (B, S, L, Dv + Da): per slot, visual tokens ‖ audio frames on the feature dim
    slot_mask: Tensor    # (B, S) bool: slot exists for this sample (False = batch padding)
    token_mask: Tensor   # (B, S, L) bool: position holds a real visual token or audio frame
    video_mask: Tensor   # (B, S, L) bool: position holds a real visual token
    audio_mask: Tensor   # (B, S, L) bool: position holds a real (non-padding) audio frame
    has_video: Tensor    # (B,) bool
    has_audio: Tensor    # (B,) bool
    num_slots: Tensor    # (B,) long: S_i per sample


def frames_per_slot(fps: float, audio_rate: float) -> int:
    """Audio frames per visual slot; must be a whole number so slots never split a frame."""
    if fps <= 0 or audio_rate <= 0:
        raise ValueError(f"fps ({fps}) and audio_rate ({audio_rate}) must be positive")
    ratio = audio_rate / fps
    f = round(ratio)
    if f < 1 or abs(ratio - f) > 1e-9 * ratio:
        raise ValueError(f"audio_rate ({audio_rate}) must be a whole multiple of fps ({fps}); "
                         f"got {ratio:g} audio frames per slot")
    return f


def _one_dim(name: str, given: int | None, seen: set[int]) -> int:
    """One feature size, from the data when present, else from the caller's argument."""
    if len(seen) > 1:
        raise ValueError(f"inconsistent {name} across the batch: {sorted(seen)}")
    if seen:
        (value,) = seen
        if given is not None and given != value:
            raise ValueError(f"{name}={given} but the inputs have {value}")
        return value
    if given is None:
        raise ValueError(f"{name} is required: no sample in the batch carries that modality")
    return given


def _infer_dims(video: list[Tensor | None], audio: list[Tensor | None],
                video_dim: int | None, audio_dim: int | None,
                num_visual_tokens: int | None) -> tuple[int, int, int]:
    """(Nv, Dv, Da), so the output shape is the same whether or not a modality is present."""
    for v in video:
        if v is not None and v.dim() != 3:
            raise ValueError(f"video must be (T, Nv, Dv), got shape {tuple(v.shape)}")
    for a in audio:
        if a is not None and a.dim() != 2:
            raise ValueError(f"audio must be (A, Da), got shape {tuple(a.shape)}")
    nv = _one_dim("num_visual_tokens", num_visual_tokens,
                  {v.shape[1] for v in video if v is not None})
    dv = _one_dim("video_dim", video_dim, {v.shape[2] for v in video if v is not None})
    da = _one_dim("audio_dim", audio_dim, {a.shape[1] for a in audio if a is not None})
    return nv, dv, da


def num_slots(t: int, a: int, f: int, is_image: bool = False) -> int:
    """S_i for one sample: the longer stream decides; nothing is truncated."""
    audio_slots = math.ceil(a / f)
    if is_image:
        if t != 1:
            raise ValueError(f"an image must be a single frame (1, Nv, Dv), got {t} frames")
        return max(1, audio_slots)
    if t == 0 and a == 0:
        raise ValueError("sample has neither video nor audio")
    return max(t, audio_slots)


def _reference(video: list[Tensor | None], audio: list[Tensor | None]) -> Tensor:
    """Tensor whose dtype/device the output follows: first video, else first audio."""
    for x in [*video, *audio]:
        if x is not None:
            return x
    raise ValueError("batch has neither video nor audio")


def _place_audio(out: Tensor, mask: Tensor, a: Tensor, f: int, dv: int) -> None:
    """Write one sample's audio into its slots (out: (S_i, L, Dv + Da), mask: (S_i, L))."""
    n_frames, da = a.shape
    n_slots = math.ceil(n_frames / f)
    padded = a.new_zeros(n_slots * f, da)
    padded[:n_frames] = a
    out[:n_slots, :f, dv:] = padded.view(n_slots, f, da)  # (n_slots*F, Da) -> (n_slots, F, Da)
    real = torch.arange(n_slots * f, device=mask.device) < n_frames
    mask[:n_slots, :f] = real.view(n_slots, f)  # (n_slots*F,) -> (n_slots, F)


def synchronise(video: list[Tensor | None], audio: list[Tensor | None], *,
                fps: float = 2.0, audio_rate: float = 50.0,
                video_dim: int | None = None, audio_dim: int | None = None,
                num_visual_tokens: int | None = None,
                image: list[bool] | None = None) -> SyncedBatch:
    """Group audio frames per visual slot and concatenate them with that slot's tokens.

    Why one padded tensor: the connector then handles every modality mix (video, audio,
    image, both) with the same masked code; see the module docstring for the exact layout.
    """
    if len(video) != len(audio) or not video:
        raise ValueError(f"video and audio must be non-empty lists of equal length, "
                         f"got {len(video)} and {len(audio)}")
    image = image if image is not None else [False] * len(video)
    if len(image) != len(video):
        raise ValueError(f"image has {len(image)} flags for {len(video)} samples")
    if any(flag and v is None for flag, v in zip(image, video)):
        raise ValueError("image[i] is True but video[i] is None")
    f = frames_per_slot(fps, audio_rate)
    nv, dv, da = _infer_dims(video, audio, video_dim, audio_dim, num_visual_tokens)
    ref = _reference(video, audio)
    lengths_v = [0 if v is None else v.shape[0] for v in video]
    lengths_a = [0 if a is None else a.shape[0] for a in audio]
    slots = [num_slots(t, a, f, flag) for t, a, flag in zip(lengths_v, lengths_a, image)]
    b, s, seq = len(video), max(slots), max(nv, f)

    features = torch.zeros(b, s, seq, dv + da, dtype=ref.dtype, device=ref.device)
    video_mask = torch.zeros(b, s, seq, dtype=torch.bool, device=ref.device)
    audio_mask = torch.zeros_like(video_mask)
    for i, (v, a, flag) in enumerate(zip(video, audio, image)):
        if v is not None and v.shape[0] > 0:
            v = v.to(device=ref.device, dtype=ref.dtype)
            t = slots[i] if flag else v.shape[0]  # an image fills every slot of the sample
            features[i, :t, :nv, :dv] = v  # (T_i or 1, Nv, Dv) broadcast over slots
            video_mask[i, :t, :nv] = True
        if a is not None and a.shape[0] > 0:
            _place_audio(features[i], audio_mask[i], a.to(device=ref.device, dtype=ref.dtype),
                         f, dv)

    counts = torch.tensor(slots, dtype=torch.long, device=ref.device)
    return SyncedBatch(
        features=features,
        slot_mask=torch.arange(s, device=ref.device) < counts[:, None],  # (B, S)
        token_mask=video_mask | audio_mask,
        video_mask=video_mask,
        audio_mask=audio_mask,
        has_video=torch.tensor(lengths_v, device=ref.device) > 0,
        has_audio=torch.tensor(lengths_a, device=ref.device) > 0,
        num_slots=counts,
    )
