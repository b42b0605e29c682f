"""Serving throughput and latency: dynamic batching vs none, and Serve's overhead, one run.

One random-weight checkpoint and one mp4. ``--preset tiny`` (the default) is the tiny preset
as a full-LLM checkpoint; a real-size preset (``small-qwen0.5b``) gets random weights at the
published dimensions (``benchmarks.real_size``: CLIP ViT-B/16, whisper-small, Qwen2-0.5B),
in bfloat16, its LLM in the preset's mode (LoRA: the checkpoint names the base by path).
Every request asks about that clip (after the first, its features come from the encoder's
cache, as in a conversation's later turns) and generates exactly ``--tokens`` tokens (EOS is
suppressed by the random weights rarely enough; the completion counts are reported).

  batched    generator with @serve.batch (max_batch_size = --max-batch)
  unbatched  the same app with max_batch_size 1
  direct     AVPredictor.chat in this process: the predictor call without Serve or HTTP

Both apps come from ``--config`` (a serve YAML) with one generator and one encoder replica
and ``--decoders`` decoder replicas, autoscaling off: the comparison is of one model copy,
and on one GPU gpu.yaml's autoscaled generators (0.7 GPU each) would not fit.
Concurrency levels run closed-loop (each of N client threads sends its next request when
the previous one returns) for ``--requests`` requests per level (at least 4 per thread).
Serve's overhead is the HTTP p50 at concurrency 1 on the unbatched app minus the direct
call's p50; the batched app's p50 also includes the batch window it waits by design.

    python -m benchmarks.serve [--tokens 16] [--batch-wait 0.1] [--requests 96] [--json out.json]
    python -m benchmarks.serve --preset small-qwen0.5b \
        --config pipelines/configs/serve/gpu.yaml --clip clip.mp4 --json serve-gpu.json

On a GPU the report names the device and the dtypes the model ran in (the serve config has
no dtype: the checkpoint's ``avray.yaml`` sets it; ``--dtype`` writes it there).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import os
import platform
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from benchmarks.report import emit

log = logging.getLogger("benchmarks.serve")
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "pipelines", "configs", "serve")
CPU = os.path.join(CONFIGS, "cpu.yaml")
# Model presets benchmarked at real size: the benchmarks.real_size towers that mirror them.
REAL_SIZE = {"small-qwen0.5b": dict(visual="clip-vit-base-patch16", audio="whisper-small",
                                    llm="qwen2-0.5b")}
PRESETS = ("tiny", *REAL_SIZE)


def _model_config(work: str, preset: str):
    """The preset's ModelConfig over random-weight towers written under ``work``."""
    from av_model.config import MODEL_PRESETS
    from av_model.tiny import save_tiny_models, tiny_model_config

    if preset == "tiny":
        cfg = tiny_model_config(save_tiny_models(os.path.join(work, "tiny"), seed=0))
        return dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, mode="full"))
    from benchmarks import real_size

    paths = real_size.save(os.path.join(work, "real"), **REAL_SIZE[preset])
    cfg = MODEL_PRESETS[preset]
    enc = cfg.encoders
    return dataclasses.replace(
        cfg, encoders=dataclasses.replace(
            enc, visual=dataclasses.replace(enc.visual, name_or_path=paths["visual"]),
            audio=dataclasses.replace(enc.audio, name_or_path=paths["audio"])),
        llm=dataclasses.replace(cfg.llm, name_or_path=paths["llm"]))


def _checkpoint(work: str, preset: str, llm_mode: str | None, dtype: str | None) -> str:
    """A random-weight checkpoint (random connector; LLM mode and dtype as asked)."""
    import torch

    from av_model import checkpoint
    from av_model.encoders.bundle import feature_dims
    from av_model.model import AVModel

    cfg = _model_config(work, preset)
    enc, llm = cfg.encoders, cfg.llm
    if dtype is not None:   # towers and LLM; the connector stays float32 (AVModel's choice)
        enc = dataclasses.replace(enc, visual=dataclasses.replace(enc.visual, dtype=dtype),
                                  audio=dataclasses.replace(enc.audio, dtype=dtype))
        llm = dataclasses.replace(llm, dtype=dtype)
    cfg = dataclasses.replace(cfg, encoders=enc, llm=dataclasses.replace(
        llm, mode=llm_mode or llm.mode))
    if cfg.dims.resolved and cfg.dims != feature_dims(cfg.encoders):
        raise RuntimeError(f"{preset}: stated dims {cfg.dims} but the random towers give "
                           f"{feature_dims(cfg.encoders)}")
    torch.manual_seed(0)
    model = AVModel.build(cfg, load_encoders=False)
    return str(checkpoint.save(model, os.path.join(work, "ckpt")))


def _make_clip(work: str) -> str:
    """A 4 s 128x96 mp4 with a sine audio track (needs imageio-ffmpeg)."""
    import subprocess

    import imageio_ffmpeg

    media = os.path.join(work, "media")
    os.makedirs(media)
    clip = os.path.join(media, "clip.mp4")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error",
                    "-f", "lavfi", "-i", "testsrc=size=128x96:rate=25",
                    "-f", "lavfi", "-i", "sine=frequency=440", "-t", "4",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", clip], check=True)
    return clip


def _body(clip: str, tokens: int) -> dict:
    return {"model": "bench", "max_tokens": tokens, "temperature": 0, "messages": [
        {"role": "user", "content": [{"type": "video_url", "video_url": {"url": f"file://{clip}"}},
                                     {"type": "text", "text": "What happens in the clip?"}]}]}


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _closed_loop(call, concurrency: int, total: int) -> dict:
    """N threads, each sending its next request when the last returns; latency per call."""
    latencies: list[float] = []
    tokens: list[int] = []
    lock = threading.Lock()
    remaining = [total]

    def worker():
        while True:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
            t0 = time.perf_counter()
            n = call()
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                tokens.append(n)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - start
    return {"concurrency": concurrency, "requests": total, "req_per_s": total / wall,
            "p50_ms": 1000 * statistics.median(latencies),
            "p95_ms": 1000 * _percentile(latencies, 0.95),
            "completion_tokens_mean": statistics.mean(tokens)}


def _http_caller(url: str, body: dict):
    local = threading.local()

    def call() -> int:
        session = getattr(local, "s", None) or requests.Session()
        local.s = session
        r = session.post(url + "/v1/chat/completions", json=body, timeout=300)
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]
    return call


def _serve_levels(cfg, body: dict, levels: list[int], per_level: int) -> list[dict]:
    from ray import serve

    from pipelines import serve as serve_job

    url = serve_job.start(cfg)
    call = _http_caller(url, body)
    for _ in range(5):  # warm: first request fills the feature cache, then steady state
        call()
    _closed_loop(call, max(levels), max(levels))  # and the largest batch shapes once
    rows = []
    for c in levels:
        rows.append(_closed_loop(call, c, max(per_level, 4 * c)))
        log.info("%s: %s", cfg.app_name, rows[-1])
    serve.delete(cfg.app_name)
    return rows


def _overrides(args, ckpt: str, clip: str, port: int, name: str, batch: int) -> list[str]:
    """The run's settings over the YAML: one generator and one encoder replica (the
    comparison is of one model copy; gpu.yaml's autoscaled generators would each want
    0.7 of a GPU), ``--decoders`` decoders; ``--set`` last, so it wins."""
    return [f"checkpoint={ckpt}", "model_name=bench", f"app_name={name}", f"http.port={port}",
            f"media.allowed_root={os.path.dirname(clip)}",
            f"batching.max_batch_size={batch}", f"batching.batch_wait_timeout_s={args.batch_wait}",
            "deployments.generator.autoscaling=null", "deployments.generator.num_replicas=1",
            "deployments.encoder.autoscaling=null", "deployments.encoder.num_replicas=1",
            "deployments.decoder.autoscaling=null",
            f"deployments.decoder.num_replicas={args.decoders}", *args.set]


def _demand(cfg) -> tuple[float, float]:
    """(CPUs, GPUs) the app's deployments reserve (autoscaled ones at max_replicas)."""
    cpus = gpus = 0.0
    for f in dataclasses.fields(cfg.deployments):
        d = getattr(cfg.deployments, f.name)
        n = d.num_replicas if d.autoscaling is None else d.autoscaling.get("max_replicas", 1)
        cpus, gpus = cpus + n * d.num_cpus, gpus + n * d.num_gpus
    return cpus, gpus


def _check_fits(cfg, ray_cpus: int) -> None:
    """Fail now rather than have serve.run wait forever on replicas that cannot be placed."""
    import torch

    cpus, gpus = _demand(cfg)
    have = torch.cuda.device_count()
    if gpus > have + 1e-9 or cpus > ray_cpus + 1e-9:
        raise SystemExit(f"the app wants {cpus:g} CPUs and {gpus:g} GPUs; Ray gets {ray_cpus} "
                         f"CPUs and this machine has {have} GPUs (see --decoders, --set)")


def _direct(cfg, body: dict, calls: int) -> tuple[list[float], dict]:
    """AVPredictor.chat latencies in this process, and what the model ran on."""
    import torch

    from pipelines.serve_predictor import AVPredictor

    pred = AVPredictor(cfg)
    first = pred.chat([body])[0]
    model = pred.generator.model
    dev = model.media_ids.device
    info = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else
            f"cpu ({platform.processor() or platform.machine()})",
            "dtype": {"llm": str(next(model.llm.parameters()).dtype).removeprefix("torch."),
                      "connector": str(next(model.connector.parameters()).dtype
                                       ).removeprefix("torch."),
                      "visual": model.cfg.encoders.visual.dtype,
                      "audio": model.cfg.encoders.audio.dtype},
            "llm_mode": model.cfg.llm.mode, "prompt_tokens": first["usage"]["prompt_tokens"]}
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        pred.chat([body])
        times.append(time.perf_counter() - t0)
    del pred, model
    gc.collect()
    if torch.cuda.is_available():  # give the replicas the memory back
        torch.cuda.empty_cache()
    return times, info


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=PRESETS, default="tiny")
    p.add_argument("--config", default=CPU, help="serve YAML (gpu.yaml on a GPU machine)")
    p.add_argument("--clip", help="an existing mp4 to ask about (default: make one, ffmpeg)")
    p.add_argument("--llm-mode", choices=("full", "lora", "frozen"),
                   help="default: full for tiny, the preset's mode otherwise")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="towers and LLM; default: float32 for tiny, bfloat16 otherwise")
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--requests", type=int, default=96, help="requests per concurrency level")
    p.add_argument("--levels", default="1,8,32")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--batch-wait", type=float, default=0.1)
    p.add_argument("--direct-calls", type=int, default=50)
    p.add_argument("--decoders", type=int, default=1, help="decoder replicas (fixed)")
    p.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra serve-config override, applied last (repeatable)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.clip and not os.path.isfile(args.clip):
        p.error(f"--clip: no file {args.clip}")
    if args.dtype is None and args.preset != "tiny":
        args.dtype = "bfloat16"
    return args


def main(argv: list[str] | None = None) -> dict:
    args = _args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import ray
    from ray import serve

    from av_model.configlib import load_config, to_dict
    from pipelines import jobs
    from pipelines.serve_config import ServeConfig

    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as work:
        ckpt = _checkpoint(work, args.preset, args.llm_mode, args.dtype)
        clip = os.path.realpath(args.clip) if args.clip else _make_clip(work)
        body = _body(clip, args.tokens)
        port = jobs.free_port()

        def config(name: str, batch: int) -> ServeConfig:
            return load_config(ServeConfig, args.config,
                               _overrides(args, ckpt, clip, port, name, batch))

        served = config("batched", args.max_batch)
        _check_fits(served, args.ray_cpus)
        direct, info = _direct(config("direct", 1), body, args.direct_calls)  # alone first

        # The checkout first, then whatever the driver's PYTHONPATH carries (packages).
        path = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "PYTHONPATH": path}})
        try:
            unbatched = _serve_levels(config("unbatched", 1), body, levels, args.requests)
            batched = _serve_levels(served, body, levels, args.requests)
        finally:
            serve.shutdown()
            ray.shutdown()

    direct_p50 = 1000 * statistics.median(direct)
    by = {r["concurrency"]: r for r in unbatched}
    report = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, Ray {args.ray_cpus} CPUs, "
                   f"torch threads {served.torch_threads} per replica",
        **info,
        "clip": clip,
        "args": vars(args),
        "deployments": to_dict(served.deployments),
        "direct_p50_ms": direct_p50,
        "direct_p95_ms": 1000 * _percentile(direct, 0.95),
        "serve_overhead_p50_ms": by[levels[0]]["p50_ms"] - direct_p50,
        "unbatched": unbatched, "batched": batched,
        "batching_speedup": {r["concurrency"]: r["req_per_s"] / by[r["concurrency"]]["req_per_s"]
                             for r in batched},
    }
    return emit(report, args.json)


if __name__ == "__main__":
    main()
