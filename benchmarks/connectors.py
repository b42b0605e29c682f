"""Connector cost at real sizes (random weights): forward+backward time per clip, parameters,
and the LLM tokens each preset feeds per second of video.

Each preset's connector is built at its real dimensions (FAVOR: InstructBLIP 32×768 tokens
per frame ‖ Whisper-large 1280 → 768, 2 layers, 5 s windows of 32 queries; video-SALMONN:
MRC 5 s/30 + 0.5 s/3 over Whisper ‖ audio events; Audio-Visual LLM: linear over CLIP-L 257×1024;
the single-GPU preset). A 60 s clip batch (slot-aligned features with random values) goes
through forward + backward of the connector alone (no LLM); the median of ``--reps`` runs
after one warm-up is reported, and each as a ratio against the linear connector's time in
the same run. The clip-level Q-Former (Video-LLaMA baseline, no causal module) at FAVOR sizes
is included for comparison.

    python -m benchmarks.connectors [--seconds 60] [--batch 1] [--reps 3] [--device cuda]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import statistics
import time

import torch

from av_model.config import MODEL_PRESETS, ConnectorConfig, ModelConfig
from av_model.connectors.factory import build_connector
from av_model.sync import frames_per_slot, synchronise
from benchmarks.report import emit

log = logging.getLogger("benchmarks.connectors")
LLM_DIMS = {"favor-vicuna13b": 5120, "salmonn-vicuna13b": 5120, "avllm-vicuna7b": 4096,
            "small-qwen0.5b": 896, "qformer-baseline@favor": 5120}


def _cases() -> dict[str, ModelConfig]:
    cases = dict(MODEL_PRESETS)
    favor = MODEL_PRESETS["favor-vicuna13b"]
    baseline = ConnectorConfig("qformer", window_s=(0.0,), queries=(32,), causal=False,
                               audio_proj_dim=768, max_s=60.0)
    cases["qformer-baseline@favor"] = dataclasses.replace(favor, connector=baseline)
    return cases


def _batch(cfg: ModelConfig, seconds: float, batch: int, device: str):
    d = cfg.dims
    t = int(seconds * cfg.encoders.fps)
    a = int(seconds * d.audio_rate)
    video = [torch.randn(t, d.video_tokens, d.video_dim, device=device) for _ in range(batch)]
    audio = [torch.randn(a, d.audio_dim, device=device) for _ in range(batch)]
    return synchronise(video, audio, fps=cfg.encoders.fps, audio_rate=d.audio_rate)


def _time(connector, synced, reps: int, device: str) -> list[float]:
    times = []
    for i in range(reps + 1):
        connector.zero_grad(set_to_none=True)
        start = time.perf_counter()
        out = connector(synced)
        (out.embeds.float().pow(2).mean() + out.aux_loss).backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i:                                    # the first run is the warm-up
            times.append(time.perf_counter() - start)
    return times


def run(seconds: float, batch: int, reps: int, device: str) -> dict:
    results = {}
    for name, cfg in _cases().items():
        torch.manual_seed(0)
        connector = build_connector(cfg, LLM_DIMS[name]).to(device).train()
        synced = _batch(cfg, seconds, batch, device)
        times = _time(connector, synced, reps, device)
        slots = int(seconds * cfg.encoders.fps)
        results[name] = {
            "kind": cfg.connector.kind,
            "params_m": sum(p.numel() for p in connector.parameters()) / 1e6,
            "llm_tokens_per_s_of_video": connector.tokens_for(slots) / seconds,
            "slot_tokens": max(cfg.dims.video_tokens,
                               frames_per_slot(cfg.encoders.fps, cfg.dims.audio_rate)),
            "fwd_bwd_s_median": statistics.median(times), "fwd_bwd_s_all": times}
        log.info("%-24s %-15s %7.1f M params  %5.2f tok/s  %.3f s fwd+bwd", name,
                 cfg.connector.kind, results[name]["params_m"],
                 results[name]["llm_tokens_per_s_of_video"], statistics.median(times))
        del connector, synced
    base = results["avllm-vicuna7b"]["fwd_bwd_s_median"]
    for r in results.values():
        r["time_vs_linear"] = r["fwd_bwd_s_median"] / base
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="clip length")
    parser.add_argument("--batch", type=int, default=1, help="clips per forward")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    results = run(args.seconds, args.batch, args.reps, args.device)
    report = {"machine": platform.platform(), "cpus": os.cpu_count(), "device": args.device,
              "torch": torch.__version__, "threads": args.threads, "seconds": args.seconds,
              "batch": args.batch, "results": results}
    if args.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name()
    return emit(report, args.json)


if __name__ == "__main__":
    main()
