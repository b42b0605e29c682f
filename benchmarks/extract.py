"""Feature-extraction throughput: the whole job vs its decode-only limit vs a plain loop.

All three run in one process on the same clips, so the ratios are comparable:

  sequential   a fresh process, one clip at a time: decode → visual → audio → write shard
               (the job's own stage code, without Ray), timed from process start to exit:
               imports and model loading included, as a plain script pays them
  decode-only  the job's Ray Data decode stage with the same workers and a no-op sink
               (no encoders): the ceiling for the whole job on this host
  job          pipelines.extract_features.run (actor pools, shards, errors, summary),
               timed from the call to its return; Ray is already running (as on a cluster)

Ray measurements share one Ray session, after an unmeasured 8-clip warm-up (Ray Data starts
its helper actors on a session's first dataset, once per cluster). Each mode runs at two
corpus sizes (default 100 and 300 clips): the difference cancels every fixed cost, giving
the marginal rate a long corpus sees.

    python -m benchmarks.extract --clips 100 --duration 10 [--size 596x336] [--encoders DIR]

Clips default to 596×336, the size of WebVid's previews. Peak memory is the largest summed
RSS of this process tree (Ray workers included), sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import psutil

from av_model.configlib import load_config
from av_model.tiny import save_tiny_models
from pipelines import extract_features, extract_stages, jobs
from pipelines.corpora import synthetic
from pipelines.corpora.base import read_manifest

log = logging.getLogger("avray.bench.extract")
CONFIG = os.path.join(os.path.dirname(__file__), "..", "pipelines", "configs", "extract",
                      "tiny.yaml")


@contextmanager
def peak_rss() -> Iterator[dict]:
    """Track the peak summed RSS (bytes) of this process tree while the block runs."""
    result = {"peak_bytes": 0}
    stop = threading.Event()
    me = psutil.Process()

    def sample() -> None:
        while not stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            result["peak_bytes"] = max(result["peak_bytes"], total)
            stop.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()


def run_sequential(cfg: extract_features.ExtractConfig, rows: list[dict], out: str) -> float:
    """One process, one clip at a time, through the job's own stage code; loop seconds."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    settled = extract_features.plan(cfg)
    device = "cuda" if cfg.visual_pool.num_gpus > 0 else "cpu"
    visual = extract_stages.VisualStage(cfg.encoders.visual, device)
    audio = extract_stages.AudioStage(cfg.encoders.audio, device)
    start = time.perf_counter()
    for row in rows:
        batch = {"clip_id": np.array([row["clip_id"]], dtype=object),
                 "uri": np.array([row["uri"]], dtype=object),
                 "manifest": np.array([json.dumps(row)], dtype=object)}
        batch = audio(visual(extract_stages.decode_batch(batch, settled.decode)))
        extract_stages.write_batch(batch, out, cfg.encoders.fps, settled.metadata, cfg.dtype)
    return time.perf_counter() - start


def time_sequential_process(argv: list[str], loop_json: str) -> tuple[float, float]:
    """(process wall time incl. imports and loading, loop-only time) of a fresh process."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "benchmarks.extract", "--mode", "sequential",
                    "--json", loop_json, *argv],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    with open(loop_json) as f:
        return wall, json.load(f)["loop_s"]


def run_decode_only(cfg: extract_features.ExtractConfig, rows: list[dict]) -> float:
    """The job's own decode front end into a no-op sink; seconds."""
    decode = extract_features.plan(cfg).decode
    start = time.perf_counter()
    ds = extract_features.decoded_dataset(cfg, rows, decode)
    ds = ds.map_batches(lambda b: {"clip_id": b["clip_id"]}, batch_size=None)
    n = sum(len(b["clip_id"]) for b in ds.iter_batches(batch_size=None))
    assert n == len(rows)
    return time.perf_counter() - start


def _prepare(args, clips: int) -> tuple[dict[str, str], str]:
    """Encoders and a corpus of ``clips`` clips (cached in the workdir): (dirs, manifest)."""
    enc_root = args.encoders or os.path.join(args.workdir, "encoders")
    if not os.path.isdir(os.path.join(enc_root, "visual")):
        save_tiny_models(enc_root)
    width, height = (int(v) for v in args.size.split("x"))
    synth_dir = os.path.join(args.workdir, f"synth-{clips}-{args.duration:g}s-{args.size}")
    manifest = os.path.join(synth_dir, "manifest.jsonl")
    if not os.path.exists(manifest):
        synthetic.generate(synthetic.SynthConfig(
            n=clips, seed=7, min_duration_s=args.duration, max_duration_s=args.duration,
            width=width, height=height, speech=False), synth_dir, workers=2)
    return {"visual": f"{enc_root}/visual", "audio": f"{enc_root}/audio"}, manifest


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--more-clips", type=int, default=300,
                        help="second corpus size for marginal rates (0: skip)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--size", default="596x336", help="synthetic frame size WxH")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "avray-bench"))
    parser.add_argument("--encoders", default=None, help="dir with visual/ and audio/ models")
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--mode", choices=["all", "sequential"], default="all")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("overrides", nargs="*")
    return parser.parse_args(argv)


def _cfg(args, enc: dict[str, str], manifest: str, out: str) -> extract_features.ExtractConfig:
    return load_config(extract_features.ExtractConfig, args.config, [
        f"corpus.path={manifest}", f"output={out}",
        f"encoders.visual.name_or_path={enc['visual']}",
        f"encoders.audio.name_or_path={enc['audio']}", "ray.progress_bars=false",
        *args.overrides])


def _measure_ray(args, sizes: list[int], res: dict) -> None:
    """decode-only and the job at each corpus size, in one Ray session."""
    out = os.path.join(args.workdir, "job")
    with jobs.ray_session(_cfg(args, *_prepare(args, sizes[0]), out).ray):
        # Ray Data starts its helper actors on a session's first dataset (5–7 s here): a
        # once-per-cluster cost, paid here by a short warm-up that is not measured.
        enc, manifest = _prepare(args, sizes[0])
        run_decode_only(_cfg(args, enc, manifest, out), read_manifest(manifest)[:8])
        for n in sizes:
            enc, manifest = _prepare(args, n)
            cfg, rows = _cfg(args, enc, manifest, out), read_manifest(manifest)
            with peak_rss() as mem:
                res[f"decode_only_{n}_s"] = run_decode_only(cfg, rows)
            res["decode_only_peak_gb"] = mem["peak_bytes"] / 2**30
            shutil.rmtree(out, ignore_errors=True)
            with peak_rss() as mem:
                start = time.perf_counter()
                summary = extract_features.run(cfg)
                res[f"job_{n}_s"] = time.perf_counter() - start
            res["job_peak_gb"] = mem["peak_bytes"] / 2**30
            assert summary["clips_ok"] == n, summary


def _ratios(res: dict, sizes: list[int]) -> None:
    n = sizes[0]
    for key in ("sequential", "decode_only", "job"):
        res[f"{key}_clips_per_s"] = n / res[f"{key}_{n}_s"]
        if len(sizes) > 1:  # fixed start-up costs cancel in the difference
            m = sizes[1]
            res[f"{key}_marginal_clips_per_s"] = (m - n) / (res[f"{key}_{m}_s"] - res[f"{key}_{n}_s"])
    for kind in ("", "_marginal") if len(sizes) > 1 else ("",):
        job = res[f"job{kind}_clips_per_s"]
        res[f"job_vs_decode_only{kind}"] = job / res[f"decode_only{kind}_clips_per_s"]
        res[f"job_vs_sequential{kind}"] = job / res[f"sequential{kind}_clips_per_s"]


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    jobs.setup_logging()
    if args.mode == "sequential":  # the child process of time_sequential_process
        enc, manifest = _prepare(args, args.clips)
        out = os.path.join(args.workdir, "seq")
        shutil.rmtree(out, ignore_errors=True)
        loop = run_sequential(_cfg(args, enc, manifest, out), read_manifest(manifest), out)
        with open(args.json, "w") as f:
            json.dump({"loop_s": loop}, f)
        return {}
    sizes = [args.clips] + ([args.more_clips] if args.more_clips > args.clips else [])
    res: dict = {"clips": sizes, "clip_seconds": args.duration, "size": args.size,
                 "host": f"{platform.node()} {os.cpu_count()} CPUs {platform.machine()}"}
    for n in sizes:
        _prepare(args, n)
        child = ["--clips", str(n), "--duration", str(args.duration), "--size", args.size,
                 "--workdir", args.workdir, "--config", args.config, *args.overrides]
        if args.encoders:
            child += ["--encoders", args.encoders]
        with peak_rss() as mem:
            res[f"sequential_{n}_s"], loop_s = time_sequential_process(
                child, os.path.join(args.workdir, "sequential.json"))
        res[f"sequential_{n}_loop_only_s"] = loop_s
        res["sequential_peak_gb"] = mem["peak_bytes"] / 2**30
    _measure_ray(args, sizes, res)
    _ratios(res, sizes)
    res = {k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}
    text = json.dumps(res, indent=2)
    log.info("results:\n%s", text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return res


if __name__ == "__main__":
    main()
