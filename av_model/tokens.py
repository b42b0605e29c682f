"""Modality tokens, placeholder expansion, and fusion of connector outputs by masked_scatter.

Why placeholders: the text side is tokenised once with a single ``<AUD_VIS>`` (or ``<VIS>``,
``<AUD>``) token where the media goes; it is expanded to exactly as many positions as the
connector emits for that clip, and the model overwrites those positions' embeddings in one
``masked_scatter``. No per-LLM splicing code, and the token says which streams are present
(Audio-Visual LLM's modality-augmented training).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

Tensor = torch.Tensor

VIS, AUD, AUD_VIS = "<VIS>", "<AUD>", "<AUD_VIS>"
MODALITY_TOKENS = (VIS, AUD, AUD_VIS)


def modality_token(has_video: bool, has_audio: bool) -> str:
    """The placeholder naming which streams a sample carries."""
    if has_video and has_audio:
        return AUD_VIS
    if has_video:
        return VIS
    if has_audio:
        return AUD
    raise ValueError("a sample must carry video, audio or both")


def add_modality_tokens(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Register the three tokens as special (never split) and make sure padding exists."""
    missing = [t for t in MODALITY_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing},
                                     replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return media_token_ids(tokenizer)


def media_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = tokenizer.convert_tokens_to_ids(list(MODALITY_TOKENS))
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
        raise ValueError("tokenizer lacks the modality tokens; call add_modality_tokens first")
    return ids


def expand_placeholder(ids: list[int], labels: list[int], media_ids: list[int],
                       count: int) -> tuple[list[int], list[int]]:
    """Repeat the sample's single placeholder ``count`` times (labels -100 there)."""
    where = [i for i, t in enumerate(ids) if t in media_ids]
    if len(where) != 1:
        raise ValueError(f"a sample needs exactly one media placeholder, found {len(where)}")
    i = where[0]
    return (ids[:i] + [ids[i]] * count + ids[i + 1:],
            labels[:i] + [-100] * count + labels[i + 1:])


def fuse(inputs_embeds: Tensor, input_ids: Tensor, media_ids: Tensor, media: Tensor,
         lengths: Tensor) -> Tensor:
    """Overwrite placeholder positions with connector outputs, sample by sample, in order.

    inputs_embeds (B, T, D), input_ids (B, T), media (B, N, D) with lengths (B,). Sample i
    must hold exactly ``lengths[i]`` placeholder positions.
    """
    slots = torch.isin(input_ids, media_ids)                         # (B, T)
    counts = slots.sum(1)
    if not torch.equal(counts.cpu(), lengths.cpu()):
        raise ValueError(f"placeholder positions per sample {counts.tolist()} != connector "
                         f"tokens {lengths.tolist()}")
    real = torch.arange(media.shape[1], device=media.device)[None] < lengths[:, None]  # (B, N)
    source = media[real].to(inputs_embeds.dtype)                     # (sum lengths, D), row-major
    return inputs_embeds.masked_scatter(slots[..., None], source)
