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
Serve's overhead is measured twice on the unbatched app. First, the HTTP p50 at concurrency
1 minus the p50 of the direct calls made before Ray started. Second, paired: ``--pairs``
direct and HTTP calls alternate (the predictor stays loaded in this process), and the
overhead is the median per-pair difference. On a shared host whose speed drifts between
phases the paired figure is the one to trust. The batched app's p50 also includes the
batch window it waits by design.

Both apps run in each ``--modes`` entry, each on a Ray of its own (Ray reads the mode when
its processes start):

  proxy           the config as it is: clients → Serve's HTTP proxy → ChatIngress → ...
  direct-ingress  ``http.direct_port``: Serve's throughput-optimized mode; ChatIngress
                  serves HTTP itself, user code runs on the replicas' event loops
  direct-fused    that, and ``deployments.encoders_in_generator``: the generator holds the
                  encoders, so a media request makes one deployment hop less

    python -m benchmarks.serve [--tokens 16] [--batch-wait 0.1] [--requests 96] [--json out.json]
    python -m benchmarks.serve --preset small-qwen0.5b \
        --config pipelines/configs/serve/gpu.yaml --clip clip.mp4 --json serve-gpu.json

On a GPU the report names the device and the dtypes the model ran in (the serve config has
no dtype: the checkpoint's ``avray.yaml`` sets it; ``--dtype`` writes it there).
"""

from __future__ import annotations

import argparse
import dataclasses
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
# How the app is deployed, each step adding to the one before.
MODES = {"proxy": "the config as it is: Serve's HTTP proxy in front",
         "direct-ingress": "http.direct_port: Serve's throughput-optimized mode, the ingress "
                           "replica serves HTTP itself",
         "direct-fused": "direct-ingress and deployments.encoders_in_generator: one hop less"}


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


def _serve_levels(cfg, body: dict, levels: list[int], per_level: int,
                  direct=None, pairs: int = 0) -> tuple[list[dict], dict | None]:
    """The closed-loop rows, and with ``direct`` (the in-process predictor call) the paired
    overhead: ``pairs`` alternating direct and HTTP calls, so both see the same moment of
    a noisy shared host; the overhead is the median of the per-pair differences."""
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
    paired = None
    if direct is not None and pairs:
        d, h = [], []
        for _ in range(pairs):
            for fn, out in ((direct, d), (call, h)):
                t0 = time.perf_counter()
                fn()
                out.append(1000 * (time.perf_counter() - t0))
        paired = {"pairs": pairs, "direct_p50_ms": statistics.median(d),
                  "http_p50_ms": statistics.median(h),
                  "overhead_p50_ms": statistics.median(b - a for a, b in zip(d, h))}
        log.info("%s paired: %s", cfg.app_name, paired)
    serve.delete(cfg.app_name)
    return rows, paired


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
    deps = cfg.deployments
    for f in dataclasses.fields(deps):
        d = getattr(deps, f.name)
        if not hasattr(d, "num_cpus") or (f.name == "encoder" and deps.encoders_in_generator):
            continue
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


def _direct(cfg, body: dict, calls: int) -> tuple[list[float], dict, object]:
    """AVPredictor.chat latencies in this process, what the model ran on, and the call
    (kept for the paired overhead measurement)."""
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
    return times, info, lambda: pred.chat([body])


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
    p.add_argument("--pairs", type=int, default=60,
                   help="alternating direct/HTTP calls for the paired overhead (0: skip)")
    p.add_argument("--decoders", type=int, default=1, help="decoder replicas (fixed)")
    p.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra serve-config override, applied last (repeatable)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + "; ".join(
        f"{k}: {v}" for k, v in MODES.items()))
    p.add_argument("--json")
    args = p.parse_args(argv)
    if not set(args.modes.split(",")) <= set(MODES):
        p.error(f"--modes: some of {','.join(MODES)}, not {args.modes}")
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
    from pipelines import serve as serve_job
    from pipelines.serve_config import ServeConfig

    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as work:
        ckpt = _checkpoint(work, args.preset, args.llm_mode, args.dtype)
        clip = os.path.realpath(args.clip) if args.clip else _make_clip(work)
        body = _body(clip, args.tokens)
        port = jobs.free_port()

        def config(name: str, batch: int, extra: tuple[str, ...] = ()) -> ServeConfig:
            return load_config(ServeConfig, args.config,
                               [*_overrides(args, ckpt, clip, port, name, batch), *extra])

        served = config("batched", args.max_batch)
        _check_fits(served, args.ray_cpus)
        direct, info, direct_call = _direct(config("direct", 1), body, args.direct_calls)

        # The checkout first, then whatever the driver's PYTHONPATH carries (packages).
        path = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
        modes = {}
        for mode in args.modes.split(","):
            # direct-ingress: Serve's throughput-optimized mode, which Ray reads when its processes
            # start, so each mode gets a Ray of its own.
            extra = ([f"http.direct_port={serve_job.free_direct_port(port)}"]
                     if mode != "proxy" else [])
            extra += ["deployments.encoders_in_generator=true"] if mode == "direct-fused" else []
            unbatched_cfg = config("unbatched", 1, extra)
            ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "PYTHONPATH": path,
                                               **serve_job.ray_env(unbatched_cfg)}})
            try:
                unbatched, paired = _serve_levels(unbatched_cfg, body, levels, args.requests,
                                                  direct_call, args.pairs)
                batched, _ = _serve_levels(config("batched", args.max_batch, extra), body,
                                           levels, args.requests)
            finally:
                serve.shutdown()
                ray.shutdown()
            modes[mode] = {**_mode_report(unbatched, batched, direct, levels), "paired": paired}

    report = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, Ray {args.ray_cpus} CPUs, "
                   f"torch threads {served.torch_threads} per replica",
        **info,
        "clip": clip,
        "args": vars(args),
        "deployments": to_dict(served.deployments),
        "direct_p50_ms": 1000 * statistics.median(direct),
        "direct_p95_ms": 1000 * _percentile(direct, 0.95),
        "modes": modes,
    }
    return emit(report, args.json)


def _mode_report(unbatched: list[dict], batched: list[dict], direct: list[float],
                 levels: list[int]) -> dict:
    """One serving mode's rows, its overhead over the direct call and batching's gain."""
    by = {r["concurrency"]: r for r in unbatched}
    return {"serve_overhead_p50_ms": by[levels[0]]["p50_ms"] - 1000 * statistics.median(direct),
            "unbatched": unbatched, "batched": batched,
            "batching_speedup": {r["concurrency"]: r["req_per_s"] / by[r["concurrency"]][
                "req_per_s"] for r in batched}}


if __name__ == "__main__":
    main()
