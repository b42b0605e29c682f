"""Serving throughput and latency: dynamic batching vs none, and Serve's overhead, one run.

One tiny random-weight checkpoint (the ``tiny`` preset, full LLM) and one 4 s mp4. Every
request asks about that clip (after the first, its features come from the encoder's cache,
as in a conversation's later turns) and generates exactly ``--tokens`` tokens (EOS is
suppressed by the random weights rarely enough; the completion counts are reported).

  batched    generator with @serve.batch (max_batch_size = --max-batch)
  unbatched  the same app with max_batch_size 1
  direct     AVPredictor.chat in this process: the predictor call without Serve or HTTP

Concurrency levels run closed-loop (each of N client threads sends its next request when
the previous one returns) for ``--requests`` requests per level (at least 4 per thread).
Serve's overhead is the HTTP p50 at concurrency 1 on the unbatched app minus the direct
call's p50; the batched app's p50 also includes the batch window it waits by design.

    python -m benchmarks.serve [--tokens 16] [--batch-wait 0.1] [--requests 96] [--json out.json]
"""

from __future__ import annotations

import argparse
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
CPU = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   "pipelines", "configs", "serve", "cpu.yaml")


def _prepare(work: str) -> tuple[str, str]:
    """A tiny random-weight checkpoint (full LLM) and a 4 s mp4 with audio."""
    import dataclasses
    import subprocess

    import imageio_ffmpeg
    import torch

    from av_model import checkpoint
    from av_model.model import AVModel
    from av_model.tiny import save_tiny_models, tiny_model_config

    cfg = tiny_model_config(save_tiny_models(os.path.join(work, "tiny"), seed=0))
    cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, mode="full"))
    torch.manual_seed(0)
    model = AVModel.build(cfg, load_encoders=False)
    ckpt = str(checkpoint.save(model, os.path.join(work, "ckpt")))
    media = os.path.join(work, "media")
    os.makedirs(media)
    clip = os.path.join(media, "clip.mp4")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error",
                    "-f", "lavfi", "-i", "testsrc=size=128x96:rate=25",
                    "-f", "lavfi", "-i", "sine=frequency=440", "-t", "4",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", clip], check=True)
    return ckpt, clip


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
    rows = []
    for c in levels:
        rows.append(_closed_loop(call, c, max(per_level, 4 * c)))
        log.info("%s: %s", cfg.app_name, rows[-1])
    serve.delete(cfg.app_name)
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--requests", type=int, default=96, help="requests per concurrency level")
    p.add_argument("--levels", default="1,8,32")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--batch-wait", type=float, default=0.1)
    p.add_argument("--direct-calls", type=int, default=50)
    p.add_argument("--json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import ray
    from ray import serve

    from av_model.configlib import load_config
    from pipelines import jobs
    from pipelines.serve_config import ServeConfig
    from pipelines.serve_predictor import AVPredictor

    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as work:
        ckpt, clip = _prepare(work)
        body = _body(clip, args.tokens)

        port = jobs.free_port()

        def config(name: str, batch: int):
            return load_config(ServeConfig, CPU, [
                f"checkpoint={ckpt}", "model_name=bench", f"app_name={name}",
                f"http.port={port}",
                f"media.allowed_root={os.path.dirname(clip)}",
                f"batching.max_batch_size={batch}",
                f"batching.batch_wait_timeout_s={args.batch_wait}"])

        # the direct predictor first, alone on the machine
        pred = AVPredictor(config("direct", 1))
        pred.chat([body])
        direct = []
        for _ in range(args.direct_calls):
            t0 = time.perf_counter()
            pred.chat([body])
            direct.append(time.perf_counter() - t0)
        del pred

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1",
                                           "PYTHONPATH": os.getcwd()}})
        try:
            unbatched = _serve_levels(config("unbatched", 1), body, levels, args.requests)
            batched = _serve_levels(config("batched", args.max_batch), body, levels,
                                    args.requests)
        finally:
            serve.shutdown()
            ray.shutdown()

    direct_p50 = 1000 * statistics.median(direct)
    by = {r["concurrency"]: r for r in unbatched}
    report = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch threads 1",
        "args": vars(args),
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
