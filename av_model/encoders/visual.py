"""Frozen visual tower applied per frame: uint8 frames → (T, Nv, Dv) tokens.

Why per frame: FAVOR, video-SALMONN and Audio-Visual LLM all encode each sampled frame
independently with an image tower and leave temporal modelling to the connector.

Frames arrive already resized to ``image_size`` by the decoder (``pipelines.media``), so
this module only normalises with the checkpoint's own mean/std and runs the tower. Ingest,
serving and evaluation all call ``VisualEncoder.encode`` so a clip gets identical features
on every path.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel

from av_model.config import VisualEncoderConfig
from av_model.configlib import check
from av_model.encoders.blip import BlipQFormerTower, supports_qformer_tokens
from av_model.encoders.common import FrozenEncoder, default_device, freeze, torch_dtype

log = logging.getLogger(__name__)

# model_type (of the checkpoint's config) → class holding just the vision tower.
_VISION_CLASSES = {
    "clip": "CLIPVisionModel", "clip_vision_model": "CLIPVisionModel",
    "siglip": "SiglipVisionModel", "siglip_vision_model": "SiglipVisionModel",
    "blip-2": "Blip2VisionModel", "blip_2_vision_model": "Blip2VisionModel",
    "instructblip": "InstructBlipVisionModel",
    "instructblip_vision_model": "InstructBlipVisionModel",
}
# Whether the tower prepends a [CLS] token to its patch tokens (SigLIP does not).
_NO_CLS = {"siglip", "siglip_vision_model"}
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class VisualInputSpec:
    """What the decoder must produce for this tower, read without loading weights."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    model_type: str


def _vision_config(hf_config):
    return getattr(hf_config, "vision_config", hf_config)


def _processor_stats(name_or_path: str) -> tuple[tuple, tuple]:
    """Mean/std from the checkpoint's preprocessor_config.json (local or hub), else CLIP's."""
    try:
        from transformers.utils import cached_file

        path = cached_file(name_or_path, "preprocessor_config.json")
        with open(path) as f:
            pp = json.load(f)
        return tuple(pp["image_mean"]), tuple(pp["image_std"])
    except (OSError, KeyError, ValueError) as err:
        log.warning("no image mean/std for %s (%s); using CLIP's", name_or_path, err)
        return _CLIP_MEAN, _CLIP_STD


def visual_input_spec(cfg: VisualEncoderConfig) -> VisualInputSpec:
    """Read (and check against ``cfg``) the tower's input contract from its config files."""
    hf = AutoConfig.from_pretrained(cfg.name_or_path)
    vision = _vision_config(hf)
    depth = int(vision.num_hidden_layers) + 1  # hidden_states: embeddings + every layer
    check(-depth <= cfg.layer < depth, "layer",
          f"{cfg.name_or_path} has hidden states 0..{depth - 1}, got {cfg.layer}")
    check(cfg.token_mode != "qformer" or supports_qformer_tokens(hf.model_type), "token_mode",
          f"qformer needs a BLIP-2 or InstructBLIP checkpoint, {cfg.name_or_path} is "
          f"{hf.model_type}")
    mean, std = _processor_stats(cfg.name_or_path)
    return VisualInputSpec(int(vision.image_size), mean, std, hf.model_type)


def visual_token_count(cfg: VisualEncoderConfig, vision_config, has_cls: bool) -> int:
    """Nv for a token mode, from the tower's config alone (no weights)."""
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    if cfg.token_mode == "cls":
        return 1
    if cfg.token_mode == "pooled":
        return cfg.pooled_tokens
    return patches + (1 if has_cls and cfg.token_mode == "all" else 0)


def visual_dims(cfg: VisualEncoderConfig) -> tuple[int, int]:
    """(Nv, Dv) of this tower and token mode, read from config files only."""
    hf = AutoConfig.from_pretrained(cfg.name_or_path)
    if cfg.token_mode == "qformer":
        return int(hf.num_query_tokens), int(hf.qformer_config.hidden_size)
    vision = _vision_config(hf)
    nv = visual_token_count(cfg, vision, hf.model_type not in _NO_CLS)
    return nv, int(vision.hidden_size)


def _load_tower(name_or_path: str, model_type: str, dtype: torch.dtype):
    import transformers

    cls_name = _VISION_CLASSES.get(model_type)
    cls = getattr(transformers, cls_name) if cls_name else AutoModel
    return cls.from_pretrained(name_or_path, dtype=dtype)


class VisualEncoder(FrozenEncoder):
    """A frozen HF vision tower; ``encode(frames)`` maps (N, S, S, 3) uint8 → (N, Nv, Dv)."""

    def __init__(self, cfg: VisualEncoderConfig, device: str | torch.device | None = None):
        super().__init__()
        self.cfg = cfg
        self.spec = visual_input_spec(cfg)
        if cfg.token_mode == "qformer":
            self.tower = freeze(BlipQFormerTower(cfg.name_or_path, torch_dtype(cfg.dtype)))
        else:
            self.tower = freeze(_load_tower(cfg.name_or_path, self.spec.model_type,
                                            torch_dtype(cfg.dtype)))
        self.has_cls = self.spec.model_type not in _NO_CLS
        self.register_buffer("mean", torch.tensor(self.spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.spec.std).view(1, 3, 1, 1), persistent=False)
        self.to(device or default_device())

    @property
    def hidden_size(self) -> int:
        if self.cfg.token_mode == "qformer":
            return self.tower.hidden_size
        return int(_vision_config(self.tower.config).hidden_size)

    @property
    def num_tokens(self) -> int:
        """Nv: tokens per frame for the configured token mode."""
        if self.cfg.token_mode == "qformer":
            return self.tower.num_tokens
        return visual_token_count(self.cfg, _vision_config(self.tower.config), self.has_cls)

    def _select_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (N, [1+]P, D) → (N, Nv, D) per ``token_mode``."""
        cls_tok = hidden[:, :1] if self.has_cls else hidden.mean(1, keepdim=True)
        patches = hidden[:, 1:] if self.has_cls else hidden
        mode = self.cfg.token_mode
        if mode == "all":
            return hidden
        if mode == "cls":
            return cls_tok
        if mode == "patches":
            return patches
        n, p, d = patches.shape
        side = int(math.isqrt(p))
        grid = patches.transpose(1, 2).reshape(n, d, side, side)  # (N, D, g, g)
        k = int(math.isqrt(self.cfg.pooled_tokens))
        pooled = F.adaptive_avg_pool2d(grid.float(), k).to(hidden.dtype)  # (N, D, k, k)
        return pooled.flatten(2).transpose(1, 2)  # (N, k*k, D)

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: (N, 3, S, S) float in [0, 1] → (N, Nv, Dv)."""
        x = ((pixels - self.mean) / self.std).to(self.dtype)
        if self.cfg.token_mode == "qformer":
            return self.tower(x)                     # (N, Q, Hq): the BLIP Q-Former's queries
        want_layer = self.cfg.layer != -1
        out = self.tower(pixel_values=x, output_hidden_states=want_layer)
        hidden = out.hidden_states[self.cfg.layer] if want_layer else out.last_hidden_state
        return self._select_tokens(hidden)

    @torch.no_grad()
    def encode(self, frames: np.ndarray) -> np.ndarray:
        """frames: (N, S, S, 3) uint8 → (N, Nv, Dv) float32 numpy, in bounded chunks."""
        size = self.spec.image_size
        if frames.ndim != 4 or frames.shape[1:] != (size, size, 3):
            raise ValueError(f"frames must be (N, {size}, {size}, 3) uint8, got {frames.shape}")
        outs = []
        step = self.cfg.frames_per_forward
        for i in range(0, frames.shape[0], step):
            chunk = torch.from_numpy(np.ascontiguousarray(frames[i:i + step])).to(self.device)
            pixels = chunk.permute(0, 3, 1, 2).float() / 255.0  # (n, 3, S, S)
            outs.append(self.forward(pixels).float().cpu().numpy())
        if not outs:
            return np.zeros((0, self.num_tokens, self.hidden_size), np.float32)
        return np.concatenate(outs, axis=0)
