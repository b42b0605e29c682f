"""The end-to-end demo on the built-in synthetic corpus (``make quickstart``).

    avray quickstart --workdir data/quickstart [--n 24]
    python -m pipelines.quickstart --workdir data/quickstart

What exists today: tiny random-weight models → synthetic audio-visual corpus (real mp4
files) → Ray Data feature extraction → parquet feature shards → Ray Train + DeepSpeed
(2 workers, ZeRO-2) with MLflow tracking → Ray Serve deploys the trained checkpoint behind
the OpenAI-compatible API, which answers a question about a clip from its raw mp4 over HTTP
→ the evaluation job (Ray Data, the same predictor) scores it on every question of the
held-out clips, per task family, into the same MLflow store.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

from av_model.configlib import load_config
from av_model.tiny import save_tiny_models
from pipelines import evaluate, extract_features, jobs, train
from pipelines.corpora import synthetic

log = logging.getLogger("avray.quickstart")
CONFIG = os.path.join(os.path.dirname(__file__), "configs", "extract", "tiny.yaml")
TRAIN = os.path.join(os.path.dirname(__file__), "configs", "train", "tiny-instruct.yaml")
SERVE = os.path.join(os.path.dirname(__file__), "configs", "serve", "cpu.yaml")
EVAL = os.path.join(os.path.dirname(__file__), "configs", "evaluate", "synthetic.yaml")


def _stage(n: int, total: int, text: str) -> None:
    log.info("[%d/%d] %s", n, total, text)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="avray quickstart", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="data/quickstart")
    parser.add_argument("--n", type=int, default=24, help="synthetic clips to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=40, help="training steps")
    args = parser.parse_args(argv)
    jobs.setup_logging()
    work = os.path.abspath(args.workdir)
    start = time.perf_counter()

    _stage(1, 6, f"tiny random-weight encoders → {work}/encoders")
    enc = save_tiny_models(os.path.join(work, "encoders"), seed=args.seed)

    _stage(2, 6, f"synthetic corpus: {args.n} clips → {work}/synth")
    synth_cfg = synthetic.SynthConfig(n=args.n, seed=args.seed, min_duration_s=8.0,
                                      max_duration_s=10.0,
                                      split_fractions={"train": 0.75, "val": 0.25})
    synthetic.generate(synth_cfg, os.path.join(work, "synth"))

    _stage(3, 6, f"feature extraction (Ray Data) → {work}/features")
    cfg = load_config(extract_features.ExtractConfig, CONFIG, [
        f"corpus.path={work}/synth/manifest.jsonl", f"output={work}/features",
        f"encoders.visual.name_or_path={enc['visual']}",
        f"encoders.audio.name_or_path={enc['audio']}"])
    with jobs.ray_session(cfg.ray):
        summary = extract_features.run(cfg)

    _stage(4, 6, f"training {args.steps} steps (Ray Train + DeepSpeed ZeRO-2) → {work}/runs")
    result = train.main(["--config", TRAIN, f"data.features={work}/features",
                         f"model_base={work}/encoders/model.yaml", f"run.storage_path={work}/runs",
                         f"optim.max_steps={args.steps}", f"run.checkpoint_every={args.steps}",
                         f"run.val_every={args.steps}", "ray.progress_bars=false"])
    _stage(5, 6, "Ray Serve: the trained model answers about a raw mp4 over HTTP")
    with result.checkpoint.as_directory() as path:
        qa = _ask(os.path.join(path, "model"), f"{work}/synth")
        _stage(6, 6, "evaluation (Ray Data + the serving predictor) on the held-out clips")
        scores = evaluate.main(["--config", EVAL, f"checkpoint={os.path.join(path, 'model')}",
                                "only=[synth_qa]", f"output={work}/eval",
                                f"tasks.synth_qa.annotations={work}/synth/manifest.jsonl",
                                "tasks.synth_qa.split=val", "ray.progress_bars=false",
                                f"tracking.uri=sqlite:///{work}/runs/mlflow.db"])
    qa_scores = scores["tasks"]["synth_qa"]
    log.info("done in %.0f s. Produced:\n  media     %s/synth/media (%d mp4 files)\n"
             "  manifest  %s/synth/manifest.jsonl\n  features  %s/features/features (parquet)\n"
             "  errors    %s/features/errors/errors.parquet\n  runs      %s/runs (checkpoints, "
             "MLflow store mlflow.db)\n  eval      %s/eval/results.md\n  extract   %s\n"
             "  train     %s\n  evaluate  accuracy %.3f on %d questions, by family %s\n"
             "  Q: %s\n  A: %s (reference: %s; a tiny model after %d steps)",
             time.perf_counter() - start, work, args.n, work, work, work, work, work,
             json.dumps(summary), json.dumps({k: round(v, 4) for k, v in result.metrics.items()}),
             qa_scores["scores"]["accuracy"], qa_scores["n"],
             json.dumps({g: round(s["accuracy"], 3) for g, s in qa_scores["groups"].items()}),
             qa["question"], qa["answer"], qa["reference"], args.steps)
    return {**summary, "train": result.metrics, "qa": qa, "evaluate": scores}


def _ask(checkpoint: str, synth: str) -> dict:
    """Serve the checkpoint, POST the first clip's first question as an OpenAI chat request
    with the clip as a ``video_url`` part, and shut the app down again."""
    import urllib.request

    from ray import serve

    from pipelines import serve as serve_job
    from pipelines.serve_config import ServeConfig

    with open(os.path.join(synth, "manifest.jsonl")) as f:
        row = next(r for r in map(json.loads, f) if r.get("conversations"))
    cfg = load_config(ServeConfig, SERVE, [f"checkpoint={checkpoint}", "model_name=quickstart",
                                           f"media.allowed_root={synth}",
                                           f"http.port={jobs.free_port()}"])
    question = row["conversations"][0]["content"].split("\n")[-1]
    body = {"model": "quickstart", "temperature": 0, "max_tokens": 8, "messages": [
        {"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": f"file://{row['uri']}"}},
            {"type": "text", "text": question}]}]}
    with jobs.ray_session(jobs.RayConfig()):
        url = serve_job.start(cfg)
        try:
            req = urllib.request.Request(f"{url}/v1/chat/completions",
                                         data=json.dumps(body).encode(),
                                         headers={"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=300) as resp:
                answer = json.load(resp)["choices"][0]["message"]["content"]
        finally:
            serve.shutdown()
    return {"clip_id": row["clip_id"], "question": question, "answer": answer,
            "reference": row["conversations"][1]["content"], "url": f"{url}/v1"}


if __name__ == "__main__":
    main()
