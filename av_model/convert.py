"""Import the released FAVOR / video-SALMONN delta checkpoints into our modules.

The released ``pytorch_model*.pt`` is a flat dict of the *trainable* parameters of their
``openllama.py`` model (LAVIS BERT Q-Former names). This module maps them onto
``WindowedQFormer`` / ``MultiResQFormer`` and a PEFT adapter, and writes an avray checkpoint
whose config sets ``causal_compat: true`` (the released mask direction; see qformer.py), so
the released weights can be served. ``blip2_to_ours`` maps transformers'
``Blip2QFormerModel`` names, which the parity test uses.

    python -m av_model.convert --delta pytorch_model_4_5001.pt --preset salmonn-vicuna13b \\
        --out ckpt/salmonn-released [--llm /models/vicuna-13b-v1.5]

Released name → ours (``P`` = the Q-Former prefix, e.g. ``video_Qformer.bert``):

    P.embeddings.LayerNorm                          qformer.query_ln
    P.encoder.layer.i.attention.self.{query,key,value}     qformer.layers.i.self_attn.{q,k,v}
    P.encoder.layer.i.attention.output.{dense,LayerNorm}   qformer.layers.i.self_attn.{o,ln}
    ...crossattention.* / encoder_causal_attention.*       ...cross_attn.* / ...causal.*
    ...intermediate_query.dense / output_query.{dense,LayerNorm}   ...ffn_in / ffn_{out,ln}
    {joint,video}_query_tokens (1,Q,H) / low_query_tokens   queries.weight (rows per resolution)
    ln_{joint,video}                                ln_in
    {joint,video}_frame_position_embedding (4096,Dc)   pos.weight (first window*L rows)
    speech_pre_qformer_proj ⊕ beats_pre_qformer_proj   audio_proj (block diagonal)
    llama_proj[_joint] (D, R*H), blocks [low ‖ high]   out_proj, blocks in our resolution order
    llama_model.<peft name>.lora_{A,B}.default.weight   adapter/ (PEFT layout)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

Tensor = torch.Tensor
log = logging.getLogger(__name__)

_LAYER_PARTS = [  # (released / LAVIS part, ours)
    (r"attention\.self\.(query|key|value)", r"self_attn.\1"),
    (r"attention\.output\.dense", "self_attn.o"),
    (r"attention\.output\.LayerNorm", "self_attn.ln"),
    (r"crossattention\.self\.(query|key|value)", r"cross_attn.\1"),
    (r"crossattention\.output\.dense", "cross_attn.o"),
    (r"crossattention\.output\.LayerNorm", "cross_attn.ln"),
    (r"encoder_causal_attention\.self\.(query|key|value)", r"causal.\1"),
    (r"encoder_causal_attention\.output\.dense", "causal.o"),
    (r"encoder_causal_attention\.output\.LayerNorm", "causal.ln"),
    (r"intermediate_query\.dense", "ffn_in"),
    (r"output_query\.dense", "ffn_out"),
    (r"output_query\.LayerNorm", "ffn_ln"),
]
_QKV = {"query": "q", "key": "k", "value": "v"}
_PREFERRED = {
    "qformer": ("joint_Qformer", "video_Qformer", "speech_Qformer"),
    "queries": ("joint_query_tokens", "video_query_tokens", "speech_query_tokens"),
    "ln": ("ln_joint", "ln_video", "ln_speech"),
    "pos": ("joint_frame_position_embedding", "video_frame_position_embedding"),
    "proj": ("llama_proj_joint", "llama_proj", "llama_proj_speech"),
}


def _layer_key(rest: str) -> str | None:
    """'encoder.layer.3.attention.self.query.weight' → 'layers.3.self_attn.q.weight'."""
    m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", rest)
    if not m:
        return None
    idx, part, kind = m.groups()
    for pattern, ours in _LAYER_PARTS:
        if re.fullmatch(pattern, part):
            name = re.sub(pattern, ours, part)
            name = re.sub(r"\.(query|key|value)$", lambda g: "." + _QKV[g.group(1)], name)
            return f"layers.{idx}.{name}.{kind}"
    return None


class _Tracked(dict):
    """The released state dict, remembering which tensors the mapping consumed."""

    def __init__(self, state: dict[str, Tensor]):
        super().__init__(state)
        self.used: set[str] = set()

    def __getitem__(self, key: str) -> Tensor:
        self.used.add(key)
        return super().__getitem__(key)

    def leftover(self) -> list[str]:
        return sorted(k for k in self if k not in self.used and ".lora_" not in k)


def lavis_qformer_to_ours(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """A LAVIS ``BertModel`` Q-Former under ``prefix`` → ``QFormerStack`` keys."""
    out = {}
    for key in list(state):
        if not key.startswith(prefix + "."):
            continue
        rest = key[len(prefix) + 1:]
        if rest.startswith("embeddings.LayerNorm."):
            out["query_ln." + rest.rsplit(".", 1)[1]] = state[key]
        elif (mapped := _layer_key(rest)) is not None:
            out[mapped] = state[key]
    return out


def blip2_to_ours(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """transformers ``Blip2QFormerModel`` → ``QFormerStack`` keys (via the LAVIS names)."""
    lavis = {}
    for key, value in state.items():
        key = key.replace("layernorm.", "embeddings.LayerNorm.", 1) if key.startswith(
            "layernorm.") else key
        key = re.sub(r"(attention|crossattention)\.attention\.", r"\1.self.", key)
        lavis["bert." + key] = value
    return lavis_qformer_to_ours(lavis, "bert")


def _pick(state: dict[str, Tensor], role: str, suffix: str = "") -> str:
    for name in _PREFERRED[role]:
        if any(k.startswith(name + suffix) for k in state):
            return name
    raise KeyError(f"no {role} parameters in the checkpoint (looked for {_PREFERRED[role]})")


def _block_diag_proj(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Whisper (and BEATs) pre-projections → one Linear over the joined audio features."""
    parts = [p for p in ("speech_pre_qformer_proj", "beats_pre_qformer_proj")
             if f"{p}.weight" in state]
    if not parts:
        return {}
    weights = [state[f"{p}.weight"] for p in parts]
    return {"audio_proj.weight": torch.block_diag(*weights),
            "audio_proj.bias": torch.cat([state[f"{p}.bias"] for p in parts])}


def released_to_connector(state: dict[str, Tensor], windows: tuple[int, ...],
                          slot_tokens: int) -> dict[str, Tensor]:
    """The connector state dict for our resolutions (``windows`` in slots, config order)."""
    qf = _pick(state, "qformer", ".bert.")
    out = {f"qformer.{k}": v for k, v in lavis_qformer_to_ours(state, qf + ".bert").items()}
    ln, pos, proj = _pick(state, "ln"), _pick(state, "pos"), _pick(state, "proj")
    out["ln_in.weight"], out["ln_in.bias"] = state[f"{ln}.weight"], state[f"{ln}.bias"]
    out["pos.weight"] = state[f"{pos}.weight"][:max(windows) * slot_tokens].clone()
    out.update(_block_diag_proj(state))
    high = state[_pick(state, "queries")][0]
    low = state["low_query_tokens"] if "low_query_tokens" in state else None
    # Released order on the projection's input: [low ‖ high] when MRC, else [high].
    released = [low[0], high] if low is not None else [high]
    ours_order = sorted(range(len(windows)), key=lambda r: windows[r])  # small window = low
    if len(windows) != len(released):
        raise ValueError(f"checkpoint has {len(released)} resolutions, config {len(windows)}")
    w, b = state[f"{proj}.weight"], state[f"{proj}.bias"]
    h = high.shape[-1]
    blocks = list(w.split(h, dim=1))                                 # per released resolution
    rank = {r: i for i, r in enumerate(ours_order)}
    out["queries.weight"] = torch.cat([released[rank[r]] for r in range(len(windows))])
    out["out_proj.weight"] = torch.cat([blocks[rank[r]] for r in range(len(windows))], dim=1)
    out["out_proj.bias"] = b
    return out


def released_lora_to_peft(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``llama_model.base_model.model.….lora_A.default.weight`` → PEFT adapter file keys."""
    out = {}
    for key, value in state.items():
        if ".lora_" not in key or not key.startswith("llama_model."):
            continue
        out[key[len("llama_model."):].replace(".default.", ".")] = value
    return out


def _resolved_config(preset: str, state: dict[str, Tensor], llm: str | None):
    """The preset with causal_compat on and sizes read off the released tensors."""
    from av_model.config import MODEL_PRESETS, FeatureDims

    cfg = MODEL_PRESETS[preset]
    qf = _pick(state, "qformer", ".bert.") + ".bert.encoder.layer."
    layers = {int(k[len(qf):].split(".")[0]) for k in state if k.startswith(qf)}
    proj = _block_diag_proj(state)
    audio_out, audio_in = proj["audio_proj.weight"].shape if proj else (0, 0)
    dc = state[f"{_pick(state, 'ln')}.weight"].shape[0]
    dims = FeatureDims(video_dim=dc - audio_out, video_tokens=32, audio_dim=audio_in,
                       audio_rate=50.0)
    connector = dataclasses.replace(
        cfg.connector, causal_compat=True, audio_proj_dim=audio_out,
        hidden=state[_pick(state, "queries")].shape[-1], layers=len(layers),
        ffn_dim=state[f"{qf}0.intermediate_query.dense.weight"].shape[0],
        causal=any(".encoder_causal_attention." in k for k in state))
    llm_cfg = dataclasses.replace(cfg.llm, name_or_path=llm or cfg.llm.name_or_path)
    return dataclasses.replace(cfg, connector=connector, dims=dims, llm=llm_cfg)


def _check_leftovers(state: _Tracked) -> None:
    """Every released tensor must land somewhere, or the import would silently differ."""
    leftover = state.leftover()
    # Built by the released code but unused when ext_same_qformer is on (the default).
    ignorable = [k for k in leftover if k.startswith("low_Qformer.")]
    if ignorable:
        log.warning("ignoring %d low_Qformer.* tensors (the released model reuses the main "
                    "Q-Former for the fine resolution)", len(ignorable))
    unknown = [k for k in leftover if k not in ignorable and not k.startswith(
        "llama_model.")]
    if unknown:
        raise ValueError(f"{len(unknown)} released tensors have no place in our modules "
                         f"(e.g. {unknown[:6]}); this checkpoint layout is not supported")
    if "beats_pre_qformer_proj.weight" in state:
        log.warning("the released model read BEATs audio-event features; this preset's "
                    "audio-event encoder differs, so fine-tune before trusting its outputs")


def convert(delta_path: str, preset: str, out_dir: str, llm: str | None = None) -> Path:
    """Write an avray checkpoint directory from a released delta checkpoint."""
    from peft import LoraConfig
    from transformers import AutoTokenizer

    from av_model.checkpoint import CONFIG_FILE, CONNECTOR_FILE
    from av_model.configlib import dump_yaml
    from av_model.connectors.factory import qformer_config
    from av_model.tokens import add_modality_tokens

    loaded = torch.load(delta_path, map_location="cpu", weights_only=True)
    state = _Tracked(loaded.get("model", loaded))
    llm_dim = state[f"{_pick(state, 'proj')}.weight"].shape[0]
    cfg = _resolved_config(preset, state, llm)
    qcfg = qformer_config(cfg.connector, cfg.dims, cfg.encoders.fps, llm_dim)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    connector = released_to_connector(state, qcfg.window_slots, qcfg.slot_tokens)
    _check_leftovers(state)
    save_file({k: v.contiguous() for k, v in connector.items()}, str(out / CONNECTOR_FILE))
    lora = released_lora_to_peft(state)
    if lora:
        (out / "adapter").mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in lora.items()},
                  str(out / "adapter" / "adapter_model.safetensors"))
        c = cfg.llm
        LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                   target_modules=list(c.lora_targets), task_type="CAUSAL_LM",
                   base_model_name_or_path=c.name_or_path).save_pretrained(str(out / "adapter"))
    else:
        cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, mode="frozen"))
    tok = AutoTokenizer.from_pretrained(cfg.llm.name_or_path)
    add_modality_tokens(tok)
    tok.save_pretrained(str(out / "tokenizer"))
    (out / CONFIG_FILE).write_text(dump_yaml(cfg))
    (out / "converted_from.json").write_text(json.dumps(
        {"delta": str(delta_path), "preset": preset, "tensors": len(state)}, indent=1))
    log.info("converted %d released tensors into %s", len(state), out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m av_model.convert",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--delta", required=True, help="released pytorch_model*.pt")
    parser.add_argument("--preset", required=True,
                        choices=["favor-vicuna13b", "salmonn-vicuna13b"])
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--llm", help="LLM name or local path (default: the preset's Vicuna)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    convert(args.delta, args.preset, args.out, args.llm)


if __name__ == "__main__":
    main()
