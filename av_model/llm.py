"""The language model: any Hugging Face causal LM, frozen, LoRA-adapted, or fully trained.

Why one builder: training, serving and evaluation must get the same module tree for the same
config (parameter names are what checkpoints key on), and the modality tokens must be added
to the vocabulary *before* PEFT wraps the model so the embedding resize is not lost.
"""

from __future__ import annotations

import logging

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from av_model.config import LLMConfig
from av_model.encoders.common import torch_dtype

log = logging.getLogger(__name__)


def _lora_config(cfg: LLMConfig) -> LoraConfig:
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_targets), bias="none",
                      task_type="CAUSAL_LM")


def load_base(cfg: LLMConfig, tokenizer: PreTrainedTokenizerBase,
              path: str | None = None) -> PreTrainedModel:
    """``from_pretrained`` on a hub name or directory, vocabulary grown to the tokenizer's."""
    model = AutoModelForCausalLM.from_pretrained(path or cfg.name_or_path,
                                                 dtype=torch_dtype(cfg.dtype))
    old = model.get_input_embeddings().num_embeddings
    if old < len(tokenizer):
        # Placeholder rows only: their input embeddings are overwritten by the connector
        # output. Zeroed (not random) so every load of a LoRA checkpoint gives the same
        # logits without saving the whole embedding table; generation suppresses them.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            model.get_input_embeddings().weight[old:] = 0
            out = model.get_output_embeddings()
            if out is not None and out.weight.shape[0] > old:
                out.weight[old:] = 0
    if model.generation_config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def apply_mode(model: PreTrainedModel, cfg: LLMConfig,
               adapter_path: str | None = None) -> PreTrainedModel:
    """Freeze, wrap with LoRA (new or loaded from ``adapter_path``), or leave fully trainable."""
    if cfg.mode == "frozen":
        model.requires_grad_(False)
    elif cfg.mode == "lora":
        model.requires_grad_(False)
        if adapter_path:
            model = PeftModel.from_pretrained(model, adapter_path, is_trainable=True)
        else:
            model = get_peft_model(model, _lora_config(cfg))
    if cfg.gradient_checkpointing:
        # Non-reentrant: the LLM's inputs are connector outputs that carry gradients, and the
        # frozen embedding table must not need requires_grad hooks.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False
    return model


def build_llm(cfg: LLMConfig, tokenizer: PreTrainedTokenizerBase, *, path: str | None = None,
              adapter_path: str | None = None) -> PreTrainedModel:
    """The LLM in its training mode; ``path``/``adapter_path`` come from a checkpoint."""
    model = apply_mode(load_base(cfg, tokenizer, path), cfg, adapter_path)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("LLM %s (%s): %d trainable parameters", cfg.name_or_path, cfg.mode, trainable)
    return model


def merge_lora(model: PreTrainedModel) -> PreTrainedModel:
    """Fold LoRA weights into the base for export; a plain model is returned unchanged."""
    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model

