"""FLOPs of an av-LLM training step: counted by torch, and in closed form.

Why a module of its own: MFU is only as honest as its numerator. With a frozen LLM and LoRA,
autograd computes no weight gradients for the base, so the usual 6N-per-token convention
overstates the work by about 1.5x; ``count_flops`` counts what really runs, and
``analytic_flops`` gives the closed form it is checked against (``benchmarks.train_gpu``'s
docstring has the formulas).
"""

from __future__ import annotations

import contextlib
from typing import Any

from torch import nn

from av_model.model import AVModel
from av_model.sync import frames_per_slot, num_slots
from pipelines.train_loop import MODEL_INPUTS


def weight_counts(model: AVModel) -> dict[str, int]:
    """Weights doing matmuls: LLM base linears (not LM head, not LoRA), head, LoRA, connector."""
    counts = {"llm_linear": 0, "lm_head": 0, "lora": 0}
    for name, module in model.llm.named_modules():
        if isinstance(module, nn.Linear):
            key = "lora" if "lora_" in name else "lm_head" if name.endswith("lm_head") \
                else "llm_linear"
            counts[key] += module.weight.numel()
    counts["connector"] = sum(p.numel() for p in model.connector.parameters())
    counts["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return counts


def analytic_flops(model: AVModel, batch: dict[str, Any], counts: dict[str, int]) -> dict:
    """The closed-form FLOPs of the module docstring for this padded batch."""
    llm_cfg = model.llm.config
    b, t = batch["input_ids"].shape                                  # padded (B, T)
    layers = llm_cfg.num_hidden_layers
    heads = llm_cfg.num_attention_heads
    d_attn = heads * (getattr(llm_cfg, "head_dim", None) or llm_cfg.hidden_size // heads)
    tokens, attn = b * t, layers * d_attn * b * t * t
    f = frames_per_slot(model.cfg.encoders.fps, model.cfg.dims.audio_rate)
    positions = sum(num_slots(v.shape[0], a.shape[0], f) for v, a in
                    zip(batch["video"], batch["audio"])) * max(model.cfg.dims.video_tokens, f)
    dense = counts["llm_linear"] + counts["lm_head"]
    forward = 2 * dense * tokens + 4 * attn
    # Backward of a frozen base: input gradients only (1x forward, attention 2x).
    llm = forward + (2 * dense * tokens + 8 * attn) + 6 * counts["lora"] * tokens
    connector = 6 * counts["connector"] * positions
    return {"llm_forward": forward, "llm_forward_matmul_only": 2 * dense * tokens,
            "llm_attention_step": 12 * attn, "llm_step": llm, "connector_6n": connector,
            "connector_positions": positions, "lora_step": llm + connector,
            "six_n_convention": 6 * (dense + counts["lora"]) * tokens + 12 * attn + connector}


@contextlib.contextmanager
def _kv_heads_repeated():
    """Older torch FLOP formulas assert as many key as query heads (no GQA): for the count
    only, transformers repeats K/V heads as it does under a mask (same FLOPs, more copies)."""
    from torch.utils.flop_counter import sdpa_flop_count

    try:
        sdpa_flop_count((1, 2, 4, 8), (1, 1, 4, 8), (1, 1, 4, 8))
        gqa_counted = True
    except Exception:  # noqa: BLE001 -- an AssertionError in the torch versions seen
        gqa_counted = False
    from transformers.integrations import sdpa_attention

    original = getattr(sdpa_attention, "use_gqa_in_sdpa", None)
    if original is not None and not gqa_counted:
        sdpa_attention.use_gqa_in_sdpa = lambda *args, **kwargs: False
    try:
        yield
    finally:
        if original is not None:
            sdpa_attention.use_gqa_in_sdpa = original


def count_flops(model: AVModel, batch: dict[str, Any]) -> dict[str, Any]:
    """FLOPs of one real forward + backward, counted by torch; gradients dropped after.

    The connector's share is counted on its own (``embed``: sync + connector + fusion, the
    same work as inside the step): the counter's per-module split misattributes backward.
    """
    from torch.utils.flop_counter import FlopCounterMode

    step, connector = FlopCounterMode(display=False), FlopCounterMode(display=False)
    with _kv_heads_repeated(), step:
        model(**{k: batch[k] for k in MODEL_INPUTS}).loss.backward()
    with connector:
        embeds, aux = model.embed(batch["input_ids"].to(model.media_ids.device),
                                  batch["video"], batch["audio"], batch["image"])
        (embeds.float().sum() + aux).backward()
    model.zero_grad(set_to_none=True)
    ops = step.get_flop_counts().get("Global", {})
    total, conn = step.get_total_flops(), connector.get_total_flops()
    return {"step": total, "connector": conn, "llm": total - conn,
            "counted_includes_attention": any("attention" in str(op) for op in ops)}
