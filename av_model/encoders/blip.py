"""BLIP-2 / InstructBLIP vision tower + its frozen Q-Former: 32 query tokens per frame.

Why: FAVOR and video-SALMONN feed the LLM-side Q-Former with InstructBLIP's per-frame
query outputs (EVA-CLIP ViT-g → Q-Former → 32 × 768), not raw patch tokens. Only the
vision tower, the Q-Former and the query tokens are read from the checkpoint (by tensor-name
prefix, shard by shard), so the 13B language model in the same repository is never loaded.

Difference from the released code: their Q-Former also reads the instruction text; features
here are computed once at ingest, before any instruction exists, so the Q-Former runs on the
queries alone (BLIP-2 style).
"""

from __future__ import annotations

import torch
import transformers
from torch import nn
from transformers import AutoConfig

from av_model.encoders.common import read_prefixed, strip_prefix

_PARTS = {  # model_type → (vision class, Q-Former class)
    "blip-2": ("Blip2VisionModel", "Blip2QFormerModel"),
    "instructblip": ("InstructBlipVisionModel", "InstructBlipQFormerModel"),
}
_PREFIXES = ("vision_model.", "qformer.", "query_tokens")


def supports_qformer_tokens(model_type: str) -> bool:
    return model_type in _PARTS


class BlipQFormerTower(nn.Module):
    """pixel_values (N, 3, S, S) → (N, num_query_tokens, qformer hidden)."""

    def __init__(self, name_or_path: str, dtype: torch.dtype):
        super().__init__()
        hf = AutoConfig.from_pretrained(name_or_path)
        vision_cls, qformer_cls = (getattr(transformers, c) for c in _PARTS[hf.model_type])
        self.config = hf
        self.vision_model = vision_cls(hf.vision_config)
        self.qformer = qformer_cls(hf.qformer_config)
        self.query_tokens = nn.Parameter(
            torch.zeros(1, hf.num_query_tokens, hf.qformer_config.hidden_size))
        state = read_prefixed(name_or_path, _PREFIXES)
        for part, module in (("vision_model.", self.vision_model), ("qformer.", self.qformer)):
            missing = module.load_state_dict(strip_prefix(state, part), strict=False).missing_keys
            if missing:
                raise ValueError(f"{name_or_path}: {part}* tensors missing: {missing[:5]}")
        with torch.no_grad():
            self.query_tokens.copy_(state["query_tokens"])
        self.to(dtype)

    @property
    def num_tokens(self) -> int:
        return int(self.config.num_query_tokens)

    @property
    def hidden_size(self) -> int:
        return int(self.config.qformer_config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        image = self.vision_model(pixel_values=pixel_values).last_hidden_state  # (N, P, Dv)
        queries = self.query_tokens.expand(image.shape[0], -1, -1)          # (N, Q, Hq)
        keys = torch.ones(image.shape[:2], dtype=torch.long, device=image.device)
        kwargs = dict(query_embeds=queries, encoder_hidden_states=image,
                      encoder_attention_mask=keys)
        if self.config.model_type == "instructblip":
            kwargs["input_ids"] = None
        out = self.qformer(**kwargs).last_hidden_state
        return out[:, :self.num_tokens]                                      # (N, Q, Hq)
