"""A LoRA training step at real size on one GPU: tokens/s and model FLOPs utilisation (MFU).

Why: the CPU benchmark (``benchmarks.train``) compares loops on a toy model; whether the
loop keeps a GPU busy (target: >= 40% MFU in bf16) only shows at real sizes. The model here
is the ``small-qwen0.5b`` preset's av-LLM with its real-size causal Q-Former (CLIP-B/16
pooled 16x768 tokens per frame || whisper-small 768 at 50 Hz, 5 s windows of 32 queries =
6.4 LLM tokens/s) in front of a random-weight Llama-3.2-1B (``benchmarks.real_size``), LoRA
on the preset's targets. No encoders run: features are random slot-aligned tensors (float16,
as the feature shards store them) collated by the training job's own ``Collator``, and the
step is ``pipelines.train_loop.Trainer`` itself, per mode:

  plain     no DeepSpeed: LLM weights in bf16 (``llm.dtype``), connector and LoRA weights
            in fp32, as the training job runs them (the loop has no autocast)
  ds-zero2  one-process DeepSpeed ZeRO-2, ``deepspeed.precision=bf16``: every weight in
            bf16, fp32 master copies of the trainable ones (also ds-zero1)

One batch is collated up front and fed every step (collation overlaps the step in the real
job); its features stay on the host unless ``--features-on-device``, so the host-to-device
copy the real loop pays is in the step. Step time is the median over the steps after
``--warmup``, each closed by ``torch.cuda.synchronize``; the last step is dropped (it
writes the final checkpoint).

FLOPs per step, all counted on the padded batch (B sequences of T positions):

- counted (primary, MFU uses it): ``torch.utils.flop_counter.FlopCounterMode`` over one
  real forward + backward. It counts matmuls and SDPA kernels, and only the work autograd
  really does: frozen base weights get no weight gradient, so the backward of the LLM is
  its input-gradient pass (about 1x forward), not 2x. SDPA is counted at full T^2 (no
  causal halving), its backward with the scores' recomputation (2.5x forward, not 2x; at
  ~600 positions attention is a few % of the step). On CPU torch has no FLOP formula for
  its SDPA kernel, so the CPU count misses attention (``counted_includes_attention``);
  without attention it equals the analytic LLM figure below exactly (the CPU test).
- analytic LoRA: forward 2*N*BT + 2*d*V*BT (LM head) + 4*L*d_attn*B*T^2 (QK^T and PV,
  full, not halved for causality); backward = input gradients 2*N*BT + 2*d*V*BT +
  8*L*d_attn*B*T^2; LoRA 6*N_lora*BT (forward, input and weight gradients); connector
  6*N_conn*P, P = its input positions (slots x positions per slot): an upper bound, since
  its query-side weights see 32 of every 250 positions. N = the LLM's non-embedding linear
  weights (LoRA and LM head excluded).
- 6N convention: 6*(N + d*V + N_lora)*BT + 12*L*d_attn*B*T^2 + 6*N_conn*P, the full
  fine-tuning figure MFU numbers are usually quoted in; for LoRA it overstates the work by
  about 1.5x, so ``mfu_6n`` is for comparison only.

MFU = FLOPs per step / step time / ``--peak-tflops`` (989: H100 SXM bf16 dense), whatever
the dtype: plain mode's connector (~10% of the FLOPs) runs fp32 matmuls, TF32 with ``--tf32``.

    python -m benchmarks.train_gpu --device cuda [--llm llama-3.2-1b] [--seconds 60] \\
        [--batch 0] [--steps 20] [--warmup 5] [--modes plain,ds-zero2] [--json out.json]
    python -m benchmarks.train_gpu --device cpu --precision fp32 --connector tiny \\
        --llm-path DIR --seconds 10 --batch 2 --steps 4 --warmup 1 --modes plain   # smoke
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import logging
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from av_model.config import MODEL_PRESETS, ModelConfig
from av_model.model import AVModel
from benchmarks.flops import analytic_flops, count_flops, weight_counts
from benchmarks.real_size import LLM, save
from benchmarks.report import emit
from pipelines.jobs import free_port
from pipelines.train_config import (DataConfig, DeepSpeedConfig, OptimConfig, RunConfig,
                                    TrainConfig)
from pipelines.train_data import Collator, iterate_rows
from pipelines.train_loop import LoopState, Trainer

log = logging.getLogger("benchmarks.train_gpu")
MODES = {"plain": (False, 0), "ds-zero1": (True, 1), "ds-zero2": (True, 2)}  # (DeepSpeed, stage)
WORDS = ("a red circle then a blue square and a low tone with two beeps while a green "
         "triangle turns yellow and the white star fades to orange").split()


@dataclass(frozen=True)
class BenchConfig:
    llm: str = "llama-3.2-1b"     # benchmarks.real_size LLM written under workdir
    llm_path: str = ""            # an existing saved LLM directory instead (e.g. a tiny one)
    connector: Literal["real", "tiny"] = "real"  # the preset's connector, or the tiny one
    preset: str = "small-qwen0.5b"
    seconds: float = 60.0         # clip length of every sample
    answer_tokens: int = 128      # assistant answer length (prompt and system text extra)
    batch: int = 0                # samples per step; 0 = fill tokens_per_step
    tokens_per_step: int = 6144
    steps: int = 20
    warmup: int = 5
    modes: tuple[str, ...] = ("plain", "ds-zero2")
    device: str = "cuda"
    precision: Literal["bf16", "fp32"] = "bf16"
    peak_tflops: float = 989.0
    tf32: bool = False            # allow TF32 for fp32 matmuls (the training job does not)
    features_on_device: bool = False
    cudnn_sdpa: bool = True       # False: torch.backends.cuda.enable_cudnn_sdp(False)
    trace_dir: str = ""           # write torch.profiler operator tables here (slows steps)
    workdir: str = os.path.join(tempfile.gettempdir(), "avray-bench-train-gpu")

    def __post_init__(self) -> None:
        if self.steps < self.warmup + 2:
            raise ValueError("steps must be >= warmup + 2 (the last step writes a checkpoint)")
        unknown = set(self.modes) - set(MODES)
        if unknown:
            raise ValueError(f"unknown modes {sorted(unknown)}; known: {sorted(MODES)}")


def model_config(cfg: BenchConfig, llm_dir: str) -> ModelConfig:
    """The preset with its LLM swapped for ``llm_dir`` in LoRA mode (preset rank, targets)."""
    preset = MODEL_PRESETS[cfg.preset]
    llm = dataclasses.replace(preset.llm, name_or_path=llm_dir, mode="lora",
                              dtype="bfloat16" if cfg.precision == "bf16" else "float32")
    out = dataclasses.replace(preset, llm=llm)
    if cfg.connector == "tiny":
        from av_model.tiny import tiny_dims, tiny_model_config

        tiny = tiny_model_config({k: "unused" for k in ("visual", "audio", "audio_events")}
                                 | {"llm": llm_dir})
        out = dataclasses.replace(out, connector=tiny.connector, dims=tiny_dims())
    return out


def _answer(tokenizer, tokens: int) -> str:
    """Words of the synthetic corpus until the text is ``tokens`` tokens long."""
    words: list[str] = []
    while len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) < tokens:
        words.append(WORDS[len(words) % len(WORDS)])
    return " ".join(words)


def make_batch(model: AVModel, cfg: BenchConfig, batch: int) -> dict[str, Any]:
    """``batch`` feature-shard rows of random features, collated by the training Collator."""
    d, fps = model.cfg.dims, model.cfg.encoders.fps
    rng = np.random.default_rng(0)
    t, a = int(round(cfg.seconds * fps)), int(round(cfg.seconds * d.audio_rate))
    turns = [{"role": "user", "content": "Describe what you see and hear in the clip."},
             {"role": "assistant", "content": _answer(model.tokenizer, cfg.answer_tokens)}]
    rows = [{"clip_id": f"synthetic-{i}", "split": "train", "conversations": turns,
             "video": rng.standard_normal((t, d.video_tokens, d.video_dim), np.float32
                                          ).astype(np.float16),
             "audio": rng.standard_normal((a, d.audio_dim), np.float32).astype(np.float16)}
            for i in range(batch)]
    data = DataConfig(features="synthetic", batch_size=batch)
    out = Collator(model, data)(next(iter(iterate_rows(rows, batch))))
    if cfg.features_on_device:
        dev = model.media_ids.device
        out.update({k: [x.to(dev) for x in out[k]] for k in ("video", "audio")},
                   **{k: out[k].to(dev) for k in ("input_ids", "attention_mask", "labels")})
    return out


def auto_batch(model: AVModel, cfg: BenchConfig) -> int:
    """Samples per step: ``cfg.batch``, else as many as fill ``tokens_per_step``."""
    if cfg.batch:
        return cfg.batch
    per_sample = make_batch(model, cfg, 1)["num_tokens"]
    return max(1, round(cfg.tokens_per_step / per_sample))


def train_config(cfg: BenchConfig, model_cfg: ModelConfig, mode: str, batch: int) -> TrainConfig:
    ds, stage = MODES[mode]
    return TrainConfig(
        name=f"bench-{mode}", stage="instruct", model=model_cfg,
        data=DataConfig(features="synthetic", batch_size=batch),  # batches come from here
        optim=OptimConfig(max_steps=cfg.steps, warmup_steps=0),
        # plain: the weights' own dtypes (bf16 LLM via llm.dtype, fp32 connector and LoRA),
        # no autocast, as RESULTS.md measured it; precision=bf16 would add the loop's autocast.
        deepspeed=DeepSpeedConfig(enabled=ds, zero_stage=stage,
                                  precision=cfg.precision if ds else "fp32"),
        run=RunConfig(checkpoint_every=cfg.steps, val_every=0, generate_samples=0))


def _ds_environment(device: str) -> None:
    """One-process DeepSpeed: its own rendezvous on loopback, the matching accelerator."""
    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(free_port())),
                       ("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)
    os.environ["DS_ACCELERATOR"] = "cuda" if device.startswith("cuda") else "cpu"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _free(device: str) -> None:
    """Release the last mode's model before the next is built (one GPU holds one at a time)."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _traced(cfg: BenchConfig, mode: str):
    """With ``trace_dir``: torch.profiler over the whole run, the operator tables (by self
    device time and by self CPU time) written as text: where a step's time goes."""
    if not cfg.trace_dir:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cfg.device.startswith("cuda")
                                     else [])
    with profile(activities=acts) as prof:
        yield
    os.makedirs(cfg.trace_dir, exist_ok=True)
    table = prof.key_averages()
    for key in ("self_cuda_time_total", "self_cpu_time_total"):
        if key == "self_cuda_time_total" and len(acts) == 1:
            continue
        with open(os.path.join(cfg.trace_dir, f"{mode}-{key}.txt"), "w") as f:
            f.write(table.table(sort_by=key, row_limit=40, max_name_column_width=70))


def run_mode(cfg: BenchConfig, mode: str, llm_dir: str, profile: bool) -> dict[str, Any]:
    """Build the model, (profile FLOPs once,) train ``cfg.steps`` steps, time them."""
    cuda = cfg.device.startswith("cuda")
    torch.manual_seed(0)
    model_cfg = model_config(cfg, llm_dir)
    model = AVModel.build(model_cfg, load_encoders=False).to(cfg.device)
    size = auto_batch(model, cfg)
    batch = make_batch(model, cfg, size)
    info: dict[str, Any] = {"batch": size}
    if profile:
        counts = weight_counts(model)
        info.update(weights=counts, flops_analytic=analytic_flops(model, batch, counts),
                    flops_counted=count_flops(model, batch),
                    attn_implementation=model.llm.config._attn_implementation,
                    connector_config=dataclasses.asdict(model_cfg.connector),
                    lora={k: getattr(model_cfg.llm, k) for k in (
                        "lora_r", "lora_alpha", "lora_dropout", "lora_targets",
                        "gradient_checkpointing", "dtype")})
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    stamps: list[float] = []

    def report(metrics: dict[str, Any], path: str | None) -> None:
        _sync(cfg.device)
        stamps.append(time.perf_counter())

    trainer = Trainer(model, train_config(cfg, model_cfg, mode, size), report)
    with tempfile.TemporaryDirectory() as tmp, _traced(cfg, mode):
        _sync(cfg.device)
        start = time.perf_counter()
        trainer.fit(lambda epoch, skip: iter(lambda: batch, None), None, LoopState(),
                    lambda step: os.path.join(tmp, str(step)))
    steps_s = [b - a for a, b in zip([start] + stamps, stamps)][cfg.warmup:-1]
    step_s = statistics.median(steps_s)
    info["result"] = {
        "step_s": step_s, "step_s_min": min(steps_s), "step_s_max": max(steps_s),
        "tokens_per_s": batch["num_tokens"] / step_s, "samples_per_s": size / step_s,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None,
        "connector_dtype": str(next(model.connector.parameters()).dtype)}
    info["tokens_per_step"] = batch["num_tokens"]
    info["media_tokens_per_sample"] = model.media_tokens(batch["samples"][0])
    info["padded_shape"] = list(batch["input_ids"].shape)
    del trainer, model
    _free(cfg.device)
    return info


def _mfu(result: dict[str, Any], flops: dict[str, Any], peak: float) -> None:
    """Add achieved TFLOP/s and MFU (counted, analytic LoRA, 6N convention) to ``result``."""
    per_s = 1.0 / (result["step_s"] * peak)
    result["tflops_counted"] = flops["counted"] / result["step_s"] / 1e12
    result["mfu"] = flops["counted"] * per_s
    result["mfu_analytic"] = flops["analytic"] * per_s
    result["mfu_6n"] = flops["six_n"] * per_s


def run(cfg: BenchConfig) -> dict[str, Any]:
    """Every requested mode; one that cannot run (DeepSpeed missing, a failure) is listed in
    ``skipped`` with the reason, the others still report."""
    llm_dir = cfg.llm_path or save(cfg.workdir, llm=cfg.llm)["llm"]
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    torch.backends.cudnn.allow_tf32 = cfg.tf32
    if not cfg.cudnn_sdpa:
        torch.backends.cuda.enable_cudnn_sdp(False)
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    profile: dict[str, Any] = {}
    for mode in cfg.modes:
        if MODES[mode][0]:
            _ds_environment(cfg.device)
            try:
                import deepspeed  # noqa: F401
            except Exception as err:  # noqa: BLE001 -- any import failure skips the mode
                skipped[mode] = f"deepspeed does not import: {err!r}"
                log.warning("%s skipped: %s", mode, skipped[mode])
                continue
        try:
            info = run_mode(cfg, mode, llm_dir, profile=not profile)
        except Exception as err:  # noqa: BLE001 -- one failing mode must not lose the others
            log.exception("%s failed", mode)
            skipped[mode] = f"failed: {err!r}"
            _free(cfg.device)
            continue
        profile = profile or info
        results[mode] = info["result"]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    report = _report(cfg, llm_dir, profile, results, skipped)
    for mode, r in results.items():
        log.info("%s: %.3f s/step, %.0f tokens/s, %.2f samples/s, MFU %.1f%% (analytic "
                 "%.1f%%, 6N %.1f%%)", mode, r["step_s"], r["tokens_per_s"], r["samples_per_s"],
                 100 * r["mfu"], 100 * r["mfu_analytic"], 100 * r["mfu_6n"])
    return report


def _report(cfg: BenchConfig, llm_dir: str, profile: dict[str, Any],
            results: dict[str, Any], skipped: dict[str, str]) -> dict[str, Any]:
    if profile:
        analytic, counted = profile["flops_analytic"], profile["flops_counted"]
        flops = {"counted": counted["step"], "analytic": analytic["lora_step"],
                 "six_n": analytic["six_n_convention"]}
        for result in results.values():
            _mfu(result, flops, cfg.peak_tflops * 1e12)
    gpu = torch.cuda.get_device_name() if cfg.device.startswith("cuda") else None
    return {"machine": platform.platform(), "device": cfg.device, "gpu": gpu,
            "torch": torch.__version__, "config": dataclasses.asdict(cfg), "llm_dir": llm_dir,
            "mfu_uses": "flops_counted.step (FlopCounterMode, forward + backward)",
            **{k: v for k, v in profile.items() if k != "result"},
            "results": results, "skipped": skipped}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llm", default=BenchConfig.llm, choices=sorted(LLM))
    parser.add_argument("--llm-path", default="")
    parser.add_argument("--connector", choices=["real", "tiny"], default="real")
    parser.add_argument("--preset", default=BenchConfig.preset, choices=sorted(MODEL_PRESETS))
    parser.add_argument("--seconds", type=float, default=BenchConfig.seconds)
    parser.add_argument("--answer-tokens", type=int, default=BenchConfig.answer_tokens)
    parser.add_argument("--batch", type=int, default=0, help="0: fill --tokens-per-step")
    parser.add_argument("--tokens-per-step", type=int, default=BenchConfig.tokens_per_step)
    parser.add_argument("--steps", type=int, default=BenchConfig.steps)
    parser.add_argument("--warmup", type=int, default=BenchConfig.warmup)
    parser.add_argument("--modes", default="plain,ds-zero2")
    parser.add_argument("--device", default=BenchConfig.device)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--peak-tflops", type=float, default=BenchConfig.peak_tflops)
    parser.add_argument("--tf32", action="store_true")
    parser.add_argument("--features-on-device", action="store_true")
    parser.add_argument("--workdir", default=BenchConfig.workdir)
    parser.add_argument("--no-cudnn-sdpa", dest="cudnn_sdpa", action="store_false",
                        help="keep SDPA off the cuDNN backend (flash / memory-efficient)")
    parser.add_argument("--trace-dir", default="", help="profiler tables here (slows steps)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fields = {k: v for k, v in vars(args).items() if k != "json"}
    cfg = BenchConfig(**{**fields, "modes": tuple(m for m in args.modes.split(",") if m)})
    return emit(run(cfg), args.json)


if __name__ == "__main__":
    main()
