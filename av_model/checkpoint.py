"""Checkpoints in DESIGN §3's layout, rebuilt from the directory alone.

    avray.yaml              the full ModelConfig (encoder + LLM identities, resolved dims)
    connector.safetensors   connector weights
    adapter/                PEFT save_pretrained (llm.mode == lora)
    llm/                    full LLM save_pretrained (mode == full, or a merged export)
    tokenizer/              tokenizer with the modality tokens

Why trainable weights only: an align/LoRA checkpoint of a 13B model is megabytes, not 26 GB;
the frozen base is named in ``avray.yaml`` and loaded by hub name or path. Local directories
only: ``pipelines`` moves them to and from s3:// and MLflow.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from av_model.config import ModelConfig
from av_model.configlib import dump_yaml, load_config
from av_model.llm import merge_lora
from av_model.model import AVModel

log = logging.getLogger(__name__)
CONFIG_FILE, CONNECTOR_FILE = "avray.yaml", "connector.safetensors"


def save(model: AVModel, out_dir: str | os.PathLike, *, merge: bool = False) -> Path:
    """Write the checkpoint; ``merge`` folds LoRA into a copy of the base -> a full ``llm/``.

    Under DeepSpeed ZeRO-3 the caller gathers parameters first and calls this on rank 0.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    state = {k: v.detach().contiguous().cpu() for k, v in model.connector.state_dict().items()}
    save_file(state, str(out / CONNECTOR_FILE))
    llm = model.llm
    if merge and cfg.llm.mode == "lora":
        llm = merge_lora(copy.deepcopy(llm))  # the live model keeps training its adapter
        cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, mode="full"))
    if cfg.llm.mode == "lora":
        # The resized embedding rows are deterministic (llm.load_base), so not saved.
        llm.save_pretrained(str(out / "adapter"), save_embedding_layers=False)
    elif cfg.llm.mode == "full":
        llm.save_pretrained(str(out / "llm"))
    model.tokenizer.save_pretrained(str(out / "tokenizer"))
    (out / CONFIG_FILE).write_text(dump_yaml(cfg))
    log.info("checkpoint written to %s (llm mode %s)", out, cfg.llm.mode)
    return out


def load_model_config(ckpt_dir: str | os.PathLike) -> ModelConfig:
    return load_config(ModelConfig, Path(ckpt_dir) / CONFIG_FILE)


def load(ckpt_dir: str | os.PathLike, *, load_encoders: bool = True,
         device: str | torch.device = "cpu", trainable: bool = False) -> AVModel:
    """Rebuild an AVModel from a checkpoint directory; eval mode unless ``trainable``."""
    root = Path(ckpt_dir)
    if not (root / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{root} is not an avray checkpoint (no {CONFIG_FILE})")
    cfg = load_model_config(root)
    full = cfg.llm.mode == "full"
    model = AVModel.build(
        cfg, load_encoders=load_encoders,
        llm_path=str(root / "llm") if full else None,
        adapter_path=str(root / "adapter") if cfg.llm.mode == "lora" else None,
        tokenizer_path=str(root / "tokenizer"))
    model.connector.load_state_dict(load_file(str(root / CONNECTOR_FILE)))
    model.to(device)
    if not trainable:
        model.eval()
        model.requires_grad_(False)
    return model
