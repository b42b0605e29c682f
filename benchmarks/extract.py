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

On a GPU host (issue 2: real-size encoders, clips/s and GPU utilisation). Such hosts may lack
ffmpeg, so the corpus is one rendered elsewhere (``avray synth``): ``--corpus DIR`` reads its
manifest.jsonl and, for more clips than it holds, copies its mp4 files under new names, so
every row is a distinct file the job really decodes (``benchmarks.corpus_copies``).
``--random-encoders`` writes random weights at CLIP ViT-L/14 and Whisper large-v2 dimensions
(``benchmarks.real_size``) and runs them under ``clip-l14-whisper-large-v2-ast.yaml`` without
its AST; pool overrides share the one GPU (``num_gpus`` per actor; the benchmark refuses
pools that cannot all start):

    python -m benchmarks.extract --corpus DIR --random-encoders --clips 100 --more-clips 300 \
        visual_pool.num_gpus=0.25 visual_pool.min_size=2 visual_pool.max_size=2 \
        audio_pool.num_gpus=0.25 audio_pool.min_size=2 audio_pool.max_size=2 \
        decode.num_cpus=0.5 decode.max_tasks=12

Each mode's GPU utilisation and peak GPU memory are sampled alongside (NVML or nvidia-smi,
see ``benchmarks.sampling``); ``gpu_usage`` is null on a host with neither. The sequential
baseline runs its encoders where the job's pools do (CUDA when their ``num_gpus`` > 0).
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
import time
from typing import Any

from av_model.configlib import load_config
from av_model.tiny import save_tiny_models
from benchmarks import corpus_copies, sampling
from pipelines import extract_features, extract_stages, jobs
from pipelines.corpora import synthetic
from pipelines.corpora.base import read_manifest

log = logging.getLogger("avray.bench.extract")
CONFIGS = os.path.join(os.path.dirname(__file__), "..", "pipelines", "configs", "extract")
CONFIG = os.path.join(CONFIGS, "tiny.yaml")
# --random-encoders: the real-size config, minus the AST (real_size has no AST preset).
REAL_CONFIG = os.path.join(CONFIGS, "clip-l14-whisper-large-v2-ast.yaml")
REAL_OVERRIDES = ["encoders.audio_events.name_or_path=null"]


def _devices(cfg: extract_features.ExtractConfig) -> dict[str, str]:
    """Where the job runs each encoder: its own pool's device (fused: the visual pool's)."""
    pools = {"visual": cfg.visual_pool, "audio": cfg.audio_pool, "events": cfg.events_pool}
    return {k: extract_features._device(cfg.visual_pool if cfg.fuse_encoders else pool)
            for k, pool in pools.items()}


def run_sequential(cfg: extract_features.ExtractConfig, rows: list[dict], out: str) -> float:
    """One process, one clip at a time, through the job's own stage code, on the devices the
    job's pools use (CUDA for a pool with GPUs); loop seconds."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    settled = extract_features.plan(cfg)
    dev = _devices(cfg)
    events = cfg.encoders.audio_events if cfg.encoders.audio_events.name_or_path else None
    stages = [extract_stages.VisualStage(cfg.encoders.visual, dev["visual"]),
              extract_stages.AudioStage(cfg.encoders.audio, dev["audio"],
                                        drop_input=events is None)]
    if events is not None:
        stages.append(extract_stages.AudioEventStage(events, dev["events"]))
    start = time.perf_counter()
    for row in rows:
        batch = {"clip_id": np.array([row["clip_id"]], dtype=object),
                 "uri": np.array([row["uri"]], dtype=object),
                 "manifest": np.array([json.dumps(row)], dtype=object)}
        batch = extract_stages.decode_batch(batch, settled.decode)
        for stage in stages:
            batch = stage(batch)
        extract_stages.write_batch(batch, out, cfg.encoders.fps, settled.metadata, cfg.dtype)
    return time.perf_counter() - start


def torch_device(cfg: extract_features.ExtractConfig) -> str:
    """What the encoders ran on, as torch names it (the sequential child reports it)."""
    import torch

    dev = _devices(cfg)
    if "cuda" not in (dev["visual"], dev["audio"]):
        return "cpu"
    return (f"cuda: {torch.cuda.get_device_name(0)} (torch {torch.__version__}, "
            f"CUDA {torch.version.cuda})")


def time_sequential_process(argv: list[str], loop_json: str) -> tuple[float, dict]:
    """(process wall time incl. imports and loading, the child's report) of a fresh process.

    The child's stderr goes to a log next to ``loop_json``; its tail is raised on failure.
    """
    log_path = loop_json.replace(".json", ".log")
    start = time.perf_counter()
    with open(log_path, "w") as err:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.extract", "--mode",
                               "sequential", "--json", loop_json, *argv],
                              stdout=subprocess.DEVNULL, stderr=err)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"sequential child failed ({proc.returncode}); {log_path}:\n{tail}")
    with open(loop_json) as f:
        return wall, json.load(f)


def run_decode_only(cfg: extract_features.ExtractConfig, rows: list[dict]) -> float:
    """The job's own decode front end into a no-op sink; seconds."""
    decode = extract_features.plan(cfg).decode
    start = time.perf_counter()
    ds = extract_features.decoded_dataset(cfg, rows, decode)
    ds = ds.map_batches(lambda b: {"clip_id": b["clip_id"]}, batch_size=None)
    n = sum(len(b["clip_id"]) for b in ds.iter_batches(batch_size=None))
    assert n == len(rows)
    return time.perf_counter() - start


def _encoders(args) -> dict[str, str]:
    """Visual and audio checkpoint dirs: tiny ones, or random real-size ones (cached)."""
    if args.random_encoders:
        from benchmarks import real_size  # imports the big model classes: only when asked

        root = args.encoders or os.path.join(
            args.workdir, f"real-{args.visual_arch}-{args.audio_arch}")
        return real_size.save(root, visual=args.visual_arch, audio=args.audio_arch)
    root = args.encoders or os.path.join(args.workdir, "encoders")
    if not os.path.isdir(os.path.join(root, "visual")):
        save_tiny_models(root)
    return {"visual": f"{root}/visual", "audio": f"{root}/audio"}


def _corpus(args, clips: int) -> str:
    """The manifest of a ``clips``-clip corpus (cached in the workdir)."""
    if args.corpus:
        return corpus_copies.cached_copies(args.corpus, clips, args.workdir)
    width, height = (int(v) for v in args.size.split("x"))
    synth_dir = os.path.join(args.workdir, f"synth-{clips}-{args.duration:g}s-{args.size}")
    manifest = os.path.join(synth_dir, "manifest.jsonl")
    if not os.path.exists(manifest):
        synthetic.generate(synthetic.SynthConfig(
            n=clips, seed=7, min_duration_s=args.duration, max_duration_s=args.duration,
            width=width, height=height, speech=False), synth_dir, workers=2)
    return manifest


def _prepare(args, clips: int) -> tuple[dict[str, str], str]:
    """Encoders and a corpus of ``clips`` clips: (dirs, manifest)."""
    return _encoders(args), _corpus(args, clips)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--more-clips", type=int, default=300,
                        help="second corpus size for marginal rates (0: skip)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--size", default="596x336", help="synthetic frame size WxH")
    parser.add_argument("--corpus", default=None,
                        help="existing synthetic corpus dir (manifest.jsonl + mp4s) to use and "
                             "replicate instead of rendering one (--duration/--size unused)")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "avray-bench"))
    parser.add_argument("--encoders", default=None, help="dir with visual/ and audio/ models")
    parser.add_argument("--random-encoders", action="store_true",
                        help="random weights at real dimensions (benchmarks.real_size) instead "
                             "of tiny ones; the config defaults to " + os.path.basename(REAL_CONFIG))
    parser.add_argument("--visual-arch", default="clip-vit-large-patch14",
                        help="with --random-encoders: a benchmarks.real_size.VISUAL key")
    parser.add_argument("--audio-arch", default="whisper-large-v2",
                        help="with --random-encoders: a benchmarks.real_size.AUDIO key")
    parser.add_argument("--config", default=None, help="default: tiny.yaml, or the real-size "
                                                       "config with --random-encoders")
    parser.add_argument("--mode", choices=["all", "sequential"], default="all")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.config is None:
        args.config = REAL_CONFIG if args.random_encoders else CONFIG
    return args


def _overrides(args) -> list[str]:
    """The run's config overrides: the real-size defaults first, so the user's win."""
    return [*(REAL_OVERRIDES if args.random_encoders else []), *args.overrides]


def _cfg(args, enc: dict[str, str], manifest: str, out: str) -> extract_features.ExtractConfig:
    return load_config(extract_features.ExtractConfig, args.config, [
        f"corpus.path={manifest}", f"output={out}",
        f"encoders.visual.name_or_path={enc['visual']}",
        f"encoders.audio.name_or_path={enc['audio']}", "ray.progress_bars=false",
        *_overrides(args)])


def _gpus_needed(cfg: extract_features.ExtractConfig) -> float:
    """GPUs the pools' minimum actors hold at once."""
    pools = [cfg.visual_pool]
    if not cfg.fuse_encoders:
        pools.append(cfg.audio_pool)
        if cfg.encoders.audio_events.name_or_path:
            pools.append(cfg.events_pool)
    return sum(p.min_size * p.num_gpus for p in pools)


def _check_gpus(cfg: extract_features.ExtractConfig, available: float) -> None:
    """Refuse pools whose minimum actors cannot all start: Ray Data would wait forever for
    the actor that finds no GPU (the real-size config asks one whole GPU per pool)."""
    need = _gpus_needed(cfg)
    if need > available + 1e-6:
        raise SystemExit(f"the pools' minimum actors need {need:g} GPUs, this host has "
                         f"{available:g}: lower <pool>.num_gpus or <pool>.min_size")


def _measure_ray(args, sizes: list[int], res: dict) -> None:
    """decode-only and the job at each corpus size, in one Ray session."""
    import ray

    out = os.path.join(args.workdir, "job")
    with jobs.ray_session(_cfg(args, *_prepare(args, sizes[0]), out).ray):
        # Ray Data starts its helper actors on a session's first dataset (5–7 s here): a
        # once-per-cluster cost, paid here by a short warm-up that is not measured.
        enc, manifest = _prepare(args, sizes[0])
        _check_gpus(_cfg(args, enc, manifest, out), ray.cluster_resources().get("GPU", 0.0))
        run_decode_only(_cfg(args, enc, manifest, out), read_manifest(manifest)[:8])
        for n in sizes:
            enc, manifest = _prepare(args, n)
            cfg, rows = _cfg(args, enc, manifest, out), read_manifest(manifest)
            with sampling.peak_rss() as mem, sampling.gpu_usage() as gpu:
                res[f"decode_only_{n}_s"] = run_decode_only(cfg, rows)
            res["decode_only_peak_gb"] = mem["peak_bytes"] / 2**30
            res["gpu_usage"][f"decode_only_{n}"] = gpu
            shutil.rmtree(out, ignore_errors=True)
            with sampling.peak_rss() as mem, sampling.gpu_usage() as gpu:
                start = time.perf_counter()
                summary = extract_features.run(cfg)
                res[f"job_{n}_s"] = time.perf_counter() - start
            res["job_peak_gb"] = mem["peak_bytes"] / 2**30
            res["gpu_usage"][f"job_{n}"] = gpu
            assert summary["clips_ok"] == n, summary


def _describe(args, cfg: extract_features.ExtractConfig, manifest: str) -> dict[str, Any]:
    """What was measured: host, devices, corpus, encoders and pools."""
    res: dict[str, Any] = {
        "host": f"{platform.node()} {os.cpu_count()} CPUs {platform.machine()}",
        "gpus": sampling.device_names() or None,
        "config": os.path.basename(args.config), "overrides": _overrides(args),
        "encoders": ({"visual": f"random {args.visual_arch}", "audio": f"random {args.audio_arch}"}
                     if args.random_encoders else args.encoders or "tiny"),
        "encoder_dtypes": [cfg.encoders.visual.dtype, cfg.encoders.audio.dtype],
        "pools": {name: {k: getattr(getattr(cfg, name), k)
                         for k in ("min_size", "max_size", "num_cpus", "num_gpus", "batch_size")}
                  for name in ("visual_pool", "audio_pool")},
        "fuse_encoders": cfg.fuse_encoders,
        "decode": {"num_cpus": cfg.decode.num_cpus, "batch_size": cfg.decode.batch_size,
                   "max_tasks": cfg.decode.max_tasks}}
    if not args.corpus:
        return {**res, "clip_seconds": args.duration, "size": args.size, "corpus": "rendered"}
    return {**res, **corpus_copies.describe(args.corpus, manifest)}


def _child_argv(args, clips: int) -> list[str]:
    """The sequential child's flags: the same encoders, corpus and config as this run."""
    argv = ["--clips", str(clips), "--duration", str(args.duration), "--size", args.size,
            "--workdir", args.workdir, "--config", args.config,
            "--visual-arch", args.visual_arch, "--audio-arch", args.audio_arch]
    argv += ["--corpus", args.corpus] if args.corpus else []
    argv += ["--encoders", args.encoders] if args.encoders else []
    argv += ["--random-encoders"] if args.random_encoders else []
    return argv + args.overrides


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


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    jobs.setup_logging()
    if args.mode == "sequential":  # the child process of time_sequential_process
        enc, manifest = _prepare(args, args.clips)
        out = os.path.join(args.workdir, "seq")
        shutil.rmtree(out, ignore_errors=True)
        cfg = _cfg(args, enc, manifest, out)
        loop = run_sequential(cfg, read_manifest(manifest), out)
        with open(args.json, "w") as f:
            json.dump({"loop_s": loop, "torch_device": torch_device(cfg)}, f)
        return {}
    sizes = [args.clips] + ([args.more_clips] if args.more_clips > args.clips else [])
    enc, manifest = _prepare(args, sizes[0])
    cfg = _cfg(args, enc, manifest, os.path.join(args.workdir, "job"))
    if _gpus_needed(cfg) > 0:  # fail before minutes of sequential work, not after
        _check_gpus(cfg, len(sampling.device_names()))
    res: dict = {"clips": sizes, **_describe(args, cfg, manifest), "gpu_usage": {}}
    for n in sizes:
        _prepare(args, n)
        with sampling.peak_rss() as mem, sampling.gpu_usage() as gpu:
            res[f"sequential_{n}_s"], child = time_sequential_process(
                _child_argv(args, n), os.path.join(args.workdir, "sequential.json"))
        res[f"sequential_{n}_loop_only_s"] = child["loop_s"]
        res["sequential_peak_gb"] = mem["peak_bytes"] / 2**30
        res["gpu_usage"][f"sequential_{n}"] = gpu
        res["torch_device"] = child["torch_device"]
    _measure_ray(args, sizes, res)
    _ratios(res, sizes)
    if not res["gpus"]:  # no counters on this host: one null, not a table of them
        res["gpu_usage"] = None
    res = _rounded(res)
    text = json.dumps(res, indent=2)
    log.info("results:\n%s", text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return res


if __name__ == "__main__":
    main()
