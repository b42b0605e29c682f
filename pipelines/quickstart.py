"""The end-to-end demo on the built-in synthetic corpus (``make quickstart``).

    make quickstart                                   # avray quickstart --workdir data/quickstart
    avray quickstart --workdir data/quickstart --keep-serving
    python -m pipelines.quickstart --workdir data/quickstart --n 24 --align-steps 30 --steps 40

Nine stages on one local Ray, each logged with the time it started at:
tiny random-weight models → synthetic audio-visual corpus (real mp4 files) → Ray Data feature
extraction into parquet shards → Ray Train + DeepSpeed ZeRO-2 on 2 workers, first the
connector alone (align, LLM frozen), then connector + LoRA (instruct) from that checkpoint,
registered in MLflow → the evaluation job scores the registered model on the held-out
clips → Ray Serve deploys the registered model → the ``openai`` client asks about a raw mp4
→ how to browse the runs and call the endpoint. Everything stops at the end unless
``--keep-serving``, which keeps the endpoint up until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass
from typing import Iterator

from av_model.configlib import load_config
from av_model.tiny import save_tiny_models
from pipelines import evaluate, extract_features, jobs, tracking, train
from pipelines.corpora import synthetic

log = logging.getLogger("avray.quickstart")
CONFIGS = os.path.join(os.path.dirname(__file__), "configs")
EXTRACT = os.path.join(CONFIGS, "extract", "tiny.yaml")
ALIGN = os.path.join(CONFIGS, "train", "tiny-align.yaml")
INSTRUCT = os.path.join(CONFIGS, "train", "tiny-instruct.yaml")
SERVE = os.path.join(CONFIGS, "serve", "cpu.yaml")
EVAL = os.path.join(CONFIGS, "evaluate", "synthetic.yaml")
MODEL_NAME = "avray-quickstart"      # the registered model and the API's model name
STAGES = 9


@dataclass(frozen=True)
class Paths:
    """Where each stage writes, under one work directory."""

    work: str

    def _sub(self, name: str) -> str:
        return os.path.join(self.work, name)

    encoders = property(lambda self: self._sub("encoders"))
    synth = property(lambda self: self._sub("synth"))
    features = property(lambda self: self._sub("features"))
    runs = property(lambda self: self._sub("runs"))
    eval = property(lambda self: self._sub("eval"))
    summary = property(lambda self: self._sub("quickstart.json"))  # what main() returns

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.runs}/mlflow.db"


class Progress:
    """``[k/9] +12s what`` lines, so a user sees where the demo is and how long it took."""

    def __init__(self) -> None:
        self.start, self.n = time.perf_counter(), 0

    def __call__(self, text: str) -> None:
        self.n += 1
        log.info("[%d/%d] +%.0fs %s", self.n, STAGES, self.elapsed, text)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="avray quickstart", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="data/quickstart")
    parser.add_argument("--n", type=int, default=24, help="synthetic clips to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--align-steps", type=int, default=30, help="stage 1 training steps")
    parser.add_argument("--steps", type=int, default=40, help="stage 2 (LoRA) training steps")
    parser.add_argument("--keep-serving", action="store_true",
                        help="keep the endpoint (and Ray) up until Ctrl-C")
    parser.add_argument("--port", type=int, default=None,
                        help="HTTP port (default 8000 with --keep-serving, else a free one)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    jobs.setup_logging()
    paths, progress = Paths(os.path.abspath(args.workdir)), Progress()

    progress(f"tiny random-weight encoders and LLM → {paths.encoders}")
    enc = save_tiny_models(paths.encoders, seed=args.seed)
    progress(f"synthetic corpus: {args.n} mp4 clips with audio → {paths.synth}")
    synthetic.generate(synthetic.SynthConfig(
        n=args.n, seed=args.seed, min_duration_s=8.0, max_duration_s=10.0,
        split_fractions={"train": 0.75, "val": 0.25}), paths.synth)
    with jobs.ray_session(jobs.RayConfig(progress_bars=False)):
        progress(f"feature extraction (Ray Data actor pools) → {paths.features}")
        summary = _extract(paths, enc)
        progress(f"align: connector only, LLM frozen, {args.align_steps} steps "
                 "(Ray Train, DeepSpeed ZeRO-2, 2 workers)")
        align = _train(paths, ALIGN, args.align_steps, [])
        with align.checkpoint.as_directory() as stage1:
            progress(f"instruct: connector + LoRA from the align checkpoint, {args.steps} steps, "
                     f"registered in MLflow as {MODEL_NAME}")
            instruct = _train(paths, INSTRUCT, args.steps, [
                f"init_from={os.path.join(stage1, 'model')}", "model.llm.mode=lora",
                f"tracking.register_as={MODEL_NAME}"])
        model_uri = tracking.latest_model_uri(MODEL_NAME, paths.tracking_uri)
        progress(f"evaluation of {model_uri} on the held-out clips (Ray Data, serving predictor)")
        scores = _evaluate(paths, model_uri)
        progress(f"Ray Serve: deploying {model_uri} behind the OpenAI-compatible API")
        result = {**summary, "align": align.metrics, "train": instruct.metrics,
                  "model_uri": model_uri, "evaluate": scores}
        with _serving(paths, model_uri, args, progress) as served:
            result.update(served)
            # Written while the endpoint is up, so a script driving --keep-serving can read it.
            with open(paths.summary, "w") as f:
                json.dump(result, f, indent=1, default=str)
            if args.keep_serving:
                log.info("serving %s at %s until Ctrl-C (summary: %s)", model_uri,
                         served["url"], paths.summary)
                jobs.wait_for_interrupt()
                log.info("stopping the endpoint")
    log.info("done in %.0f s; nothing left running.", progress.elapsed)
    return result


def _extract(paths: Paths, enc: dict[str, str]) -> dict:
    cfg = load_config(extract_features.ExtractConfig, EXTRACT, [
        f"corpus.path={paths.synth}/manifest.jsonl", f"output={paths.features}",
        f"encoders.visual.name_or_path={enc['visual']}",
        f"encoders.audio.name_or_path={enc['audio']}", "ray.progress_bars=false"])
    summary = extract_features.run(cfg)
    log.info("features: %s", json.dumps(summary))
    return summary


def _train(paths: Paths, config: str, steps: int, extra: list[str]):
    result = train.main(["--config", config, f"data.features={paths.features}",
                         f"model_base={paths.encoders}/model.yaml", f"run.storage_path={paths.runs}",
                         f"tracking.uri={paths.tracking_uri}", f"optim.max_steps={steps}",
                         f"optim.warmup_steps={max(1, steps // 10)}",
                         f"run.checkpoint_every={steps}", f"run.val_every={steps}",
                         "ray.progress_bars=false", *extra])
    log.info("trained: %s", json.dumps({k: round(v, 4) for k, v in result.metrics.items()
                                        if isinstance(v, float)}))
    return result


def _evaluate(paths: Paths, model_uri: str) -> dict:
    scores = evaluate.main(["--config", EVAL, f"checkpoint={model_uri}", "only=[synth_qa]",
                            f"output={paths.eval}",
                            f"tasks.synth_qa.annotations={paths.synth}/manifest.jsonl",
                            "tasks.synth_qa.split=val", "ray.progress_bars=false",
                            f"tracking.uri={paths.tracking_uri}"])
    qa = scores["tasks"]["synth_qa"]
    log.info("evaluation: accuracy %.3f on %d questions, by family %s (a tiny random model: "
             "the point is the pipeline, not the score)", qa["scores"]["accuracy"], qa["n"],
             json.dumps({g: round(s["accuracy"], 3) for g, s in qa["groups"].items()}))
    return scores


@contextlib.contextmanager
def _serving(paths: Paths, model_uri: str, args: argparse.Namespace,
             progress: Progress) -> Iterator[dict]:
    """Deploy, ask with the ``openai`` client, print how to go on; the endpoint stops when
    the block ends (normally, on Ctrl-C or on an error)."""
    from ray import serve

    from pipelines import serve as serve_job
    from pipelines.serve_config import ServeConfig

    port = args.port or (8000 if args.keep_serving else jobs.free_port())
    overrides = [f"checkpoint={model_uri}", f"tracking_uri={paths.tracking_uri}",
                 f"model_name={MODEL_NAME}", f"media.allowed_root={paths.synth}",
                 f"http.port={port}"]
    url = serve_job.start(load_config(ServeConfig, SERVE, overrides))
    try:
        progress(f"the openai client asks {url}/v1 about a raw mp4 (video_url)")
        qa = ask(url, first_question(paths.synth))
        log.info("\n  Q: %s\n  A: %r\n  reference: %s\n  (random-weight tiny encoders and LLM "
                 "after %d + %d steps: expect a wrong answer; `avray bench-model` trains long "
                 "enough to learn)", qa["question"], qa["answer"], qa["reference"],
                 args.align_steps, args.steps)
        progress("how to go on")
        howto = how_to(paths, url if args.keep_serving else None, overrides, qa)
        log.info("\n%s", howto)
        yield {"qa": qa, "url": f"{url}/v1", "howto": howto}
    finally:
        serve.shutdown()


def first_question(synth: str) -> dict:
    """The first held-out clip that has a question, as (mp4 path, question, reference)."""
    with open(os.path.join(synth, "manifest.jsonl")) as f:
        rows = [r for r in map(json.loads, f) if r.get("conversations")]
    row = next((r for r in rows if r.get("split") == "val"), rows[0])
    return {"clip_id": row["clip_id"], "video": row["uri"],
            "question": row["conversations"][0]["content"].split("\n")[-1],
            "reference": row["conversations"][1]["content"]}


def chat_messages(item: dict) -> list[dict]:
    return [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": f"file://{item['video']}"}},
        {"type": "text", "text": item["question"]}]}]


def ask(url: str, item: dict) -> dict:
    """One chat completion through the real ``openai`` client, as an API user would send it."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="none", timeout=300, max_retries=0)
    reply = client.chat.completions.create(model=MODEL_NAME, messages=chat_messages(item),
                                           temperature=0, max_tokens=16)
    return {**item, "answer": reply.choices[0].message.content}


def how_to(paths: Paths, live_url: str | None, serve_overrides: list[str], item: dict) -> str:
    """The commands to browse the runs, serve the registered model and call it: the live
    endpoint with ``--keep-serving``, else the one the printed serve command starts."""
    url = live_url or "http://127.0.0.1:8000"
    overrides = [o for o in serve_overrides if not o.startswith("http.port=")] + [
        f"http.port={url.rsplit(':', 1)[1]}"]
    python = shlex.quote(sys.executable)
    body = json.dumps({"model": MODEL_NAME, "temperature": 0, "messages": chat_messages(item)})
    serve_cmd = " ".join([python, "-m pipelines.serve --config", os.path.relpath(SERVE),
                          *map(shlex.quote, overrides)])
    return "\n".join([
        "Browse the runs (align, instruct, evaluation; the registered model under Models):",
        f"  {python} -m mlflow ui --backend-store-uri {paths.tracking_uri} --port 5000"
        "   # then open http://127.0.0.1:5000",
        *(["The endpoint stays up until Ctrl-C."] if live_url else [
            "Serve the registered model again (the quickstart stopped its endpoint; "
            "--keep-serving keeps it up):", f"  {serve_cmd}"]),
        "Call the endpoint:",
        f"  curl -s {url}/v1/chat/completions -H 'content-type: application/json' \\",
        f"    -d {shlex.quote(body)}",
        f"Outputs: {paths.features} (parquet features, errors/), {paths.runs} (checkpoints, "
        f"MLflow store), {paths.eval}/results.md"])


if __name__ == "__main__":
    main()
