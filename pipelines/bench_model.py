"""The synthetic audio-visual benchmark: do the connectors do what the papers claim?

    avray bench-model --workdir runs/bench-model [key=value ...]
    python -m pipelines.bench_model --config cfg.yaml steps=600 results_md=benchmarks/RESULTS.md
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python -m pipelines.bench_model --workdir /tmp/bm

One command, five stages:
  1. the synthetic corpus (``pipelines.corpora.synthetic``): real mp4 clips whose every event
     is known, with questions per family: vision (colour / shape), audio (tone, beep count),
     sync (the shape on screen at the first beep), order (which shape came first), and
     speech (the spoken word; only where espeak-ng is installed);
  2. feature extraction with the tiny encoders (the Ray Data job), after the random vision
     tower is taught the corpus's shapes and the random Whisper its tones, beeps and words
     on the training clips (``bench_encoders``: the stand-ins for pretrained encoders, which
     random towers are not);
  3. training, one run per connector (linear, clip-level Q-Former, causal windowed Q-Former,
     MRC Q-Former) on both streams, plus modality ablations (video only, audio only) of the
     causal Q-Former; runs are Ray tasks, ``parallel`` at a time, each the plain training
     loop (``train_loop.Trainer``) on one CPU thread;
  4. evaluation of each run on the held-out test clips with the evaluation predictor
     (``eval_predict.EvalPredictor``, stored features) and scorer (``eval_report``), every
     well-posed question of every test clip, accuracy per family;
  5. a table and a plot (PNG) to MLflow, ``<workdir>/results.md`` and, with ``results_md``,
     a section of ``benchmarks/RESULTS.md``. In MLflow each run is a nested run under the
     benchmark's run: its training config as params (connector kind, streams), its loss
     every ``log_every`` steps, its accuracy per family.

Why the families separate the connectors: vision and audio questions can be answered from a
clip-level summary; sync and order need to know *when* things happened, which a windowed
causal Q-Former keeps and one clip-level Q-Former pools away.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from av_model.configlib import check, from_dict, to_dict
from pipelines import jobs
from pipelines.bench_encoders import (TEACH_VERSION, TeachConfig, audio_teach_config,
                                      teach_audio, teach_visual)
from pipelines.corpora.synthetic import SynthConfig
from pipelines.bench_report import (finish_child, log_to_mlflow, parent_info, plot, report,
                                    start_child, start_parent, table, write_section)
from pipelines.train_config import TrackingConfig, TrainConfig

log = logging.getLogger("avray.bench_model")
CONNECTORS = ("linear", "qformer", "causal_qformer", "mrc_qformer")
EXTRACT = os.path.join(os.path.dirname(__file__), "configs", "extract", "tiny.yaml")


def _default_synth() -> SynthConfig:
    return SynthConfig(n=1000, seed=0, min_duration_s=6.0, max_duration_s=7.0, min_shapes=2,
                       max_shapes=2, qa_per_clip=6,
                       split_fractions={"train": 0.8, "test": 0.2})


@dataclass(frozen=True)
class RunSpec:
    """One training run: a connector and the streams it is trained and tested on."""

    connector: str
    modalities: tuple[str, ...] = ("video", "audio")
    seed: int = 0    # the training seed (BenchConfig.seed + the repeat's index)

    @property
    def name(self) -> str:
        streams = "+".join(self.modalities) if len(self.modalities) == 1 else "both"
        return f"{self.connector}/{streams}"

    @property
    def slug(self) -> str:
        """The run's directory under ``<workdir>/runs``."""
        return f"{self.name.replace('/', '_')}_seed{self.seed}"


@dataclass(frozen=True)
class BenchConfig:
    """Everything that decides the benchmark; the defaults fit a 2-core CPU machine."""

    workdir: str = "runs/bench-model"
    synth: SynthConfig = field(default_factory=_default_synth)
    # The tiny vision tower is taught the corpus's shapes first (pipelines/bench_encoders.py):
    # the stand-in for a pretrained encoder; steps 0 keeps the random tower, which cannot
    # tell the kinds apart (benchmarks/RESULTS.md).
    teach_visual: TeachConfig = field(default_factory=TeachConfig)
    # The same for the tiny Whisper: its random attention smears a 150 ms beep over its window.
    teach_audio: TeachConfig = field(default_factory=audio_teach_config)
    connectors: list[str] = field(default_factory=lambda: list(CONNECTORS))
    ablation_connector: str = "causal_qformer"   # trained video-only and audio-only too
    ablations: list[str] = field(default_factory=lambda: ["video", "audio"])
    # Optimizer steps per run. With Vicuna's system prompt the fused Q-Formers read only the
    # audio at 3000 steps (runs C, E) and the frames by 9000 (F); without it they read the
    # frames at 3000 already (benchmarks/RESULTS.md, run J). With 4000 the bench took 1017 s
    # warm and 1290 s cold here (run J), 958 s cold on a faster day (run L).
    steps: int = 4000
    batch_size: int = 8
    # 5e-4, not the 2e-3 of earlier runs: with oracle media tokens (colour + kind embeddings)
    # the tiny LLM learnt "the colour of the square" at 85-96 % with 5e-4 and at 43 % with
    # 2e-3 in the same steps (benchmarks/RESULTS.md).
    lr: float = 5e-4
    connector_lr: float | None = None  # optim.connector_lr: None = lr
    llm_mode: str = "full"        # the tiny LLM is small enough to train whole
    # The bench's own tiny Llama (the tiny preset's is 64 x 2). At 64 wide it learnt which
    # colours a clip shows but not which shape wore which: vision 48 % on linear/video, at
    # chance between the two present; 128 wide 77 %, 128 x 4 layers 48 % in the same steps
    # (benchmarks/RESULTS.md).
    llm_dim: int = 128
    llm_layers: int = 2
    # llm.system_prompt of every run. Empty: Vicuna's preamble is 64 tokens in the tiny LLM's
    # 512-token vocabulary, most of a sample, and a from-scratch LLM learns nothing from a
    # constant. Without it a linear/both run took 137 s instead of 224 s, a causal one 208 s
    # instead of 310 s (benchmarks/RESULTS.md, run J).
    system_prompt: str = ""
    # connector.output_norm of every run: rms starts media tokens at the text tokens' scale
    # (none: the raw projection; see benchmarks/RESULTS.md for both).
    output_norm: str = "rms"
    # data.turns: one = one question per sample, as evaluation asks them; all = a clip's
    # questions as one conversation (six answers per sample, but the questions give each
    # other's answers away: the order question names every shape's colour and kind).
    turns: str = "one"
    # data.caption_mix: this fraction of samples train on the clip's caption ("A red circle,
    # then a blue square. A low tone and two beeps.") instead of a question.
    caption_mix: float = 0.0
    # The Q-Formers' streams (connector.stream_fusion / stream_queries): false = FAVOR's
    # layout, a frame's tokens and its audio frames concatenated on the feature dim and read
    # by one set of queries; true = each stream at positions of its own and half of each
    # window's queries per stream (mrc_qformer then uses 2 s and 1 s windows of 4 and 2
    # queries: even counts at an equal rate). With FAVOR's layout and Vicuna's system prompt
    # the fused Q-Formers read only one stream in 3000 steps (benchmarks/RESULTS.md).
    stream_queries: bool = False
    seed: int = 0
    # Training runs per configuration, with seeds seed, seed+1, ... (connector initialisation,
    # data order, the collator's draws; the corpus, features and LLM stay those of ``seed``).
    # One configuration moved by up to 20 points between seeds (benchmarks/RESULTS.md): the
    # table gives the mean and the standard deviation over seeds.
    seeds: int = 1
    parallel: int = 2             # training runs at once (one CPU each)
    eval_batch_size: int = 16
    max_tokens: int = 8           # answers are a word or two
    log_every: int = 10           # MLflow: each run's loss etc. every N steps (and the last)
    results_md: str | None = None  # e.g. benchmarks/RESULTS.md: replace the section there
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: jobs.RayConfig = field(default_factory=jobs.RayConfig)

    def __post_init__(self) -> None:
        bad = [c for c in self.connectors + [self.ablation_connector] if c not in CONNECTORS]
        check(not bad, "connectors", f"unknown connectors {bad} (known: {CONNECTORS})")
        check(set(self.ablations) <= {"video", "audio"}, "ablations",
              "choose from video, audio")
        check(self.steps > 0 and self.batch_size > 0, "steps", "steps and batch_size > 0")
        check(self.llm_mode in ("full", "lora"), "llm_mode", "full or lora")
        check(self.llm_dim >= 8 and self.llm_dim % 4 == 0, "llm_dim",
              "must be >= 8 and a multiple of 4 (4 heads)")
        check(self.llm_layers >= 1, "llm_layers", "must be >= 1")
        check(self.output_norm in ("none", "rms"), "output_norm", "none or rms")
        check(self.turns in ("all", "one"), "turns", "all or one")
        check(self.parallel >= 1, "parallel", "must be >= 1")
        check(self.seeds >= 1, "seeds", "must be >= 1")
        check(self.log_every >= 1, "log_every", "must be >= 1")
        check(self.synth.split_fractions.get("test", 0) > 0 and
              self.synth.split_fractions.get("train", 0) > 0, "synth.split_fractions",
              "needs a train and a test split")

    def runs(self) -> list[RunSpec]:
        runs = [RunSpec(c) for c in self.connectors]
        runs += [RunSpec(self.ablation_connector, (m,)) for m in self.ablations]
        return [dataclasses.replace(r, seed=self.seed + i) for r in runs for i in range(self.seeds)]


# ----------------------------------------------------------------------------- stages 1-2


def prepare_data(cfg: BenchConfig) -> dict[str, str]:
    """Tiny encoders, the corpus and its features under ``workdir`` (reused when current)."""
    from av_model.tiny import TINY_VERSION, TinySizes, save_tiny_models
    from pipelines import extract_features
    from pipelines.corpora import synthetic
    from av_model.configlib import load_config

    work = os.path.abspath(cfg.workdir)
    enc_dir = os.path.join(work, "encoders")
    enc = save_tiny_models(enc_dir, seed=cfg.seed,
                           sizes=TinySizes(llm_dim=cfg.llm_dim, llm_layers=cfg.llm_layers))
    # Corpus and features live under a hash of what decides them: a rerun with the same
    # settings reuses them, a changed corpus never meets stale features of its clip ids.
    key = hashlib.sha1(json.dumps([to_dict(cfg.synth), cfg.seed, synthetic.PLAN_VERSION,
                                   TINY_VERSION, to_dict(cfg.teach_visual),
                                   to_dict(cfg.teach_audio), TEACH_VERSION],
                                  sort_keys=True).encode())
    data = os.path.join(work, f"data-{key.hexdigest()[:10]}")
    synthetic.generate(cfg.synth, os.path.join(data, "synth"), workers=2)
    manifest = os.path.join(data, "synth", "manifest.jsonl")
    ext = load_config(extract_features.ExtractConfig, EXTRACT, [
        f"corpus.path={manifest}", f"output={data}/features",
        f"encoders.visual.name_or_path={enc['visual']}",
        f"encoders.audio.name_or_path={enc['audio']}", "ray.progress_bars=false"])
    visual = teach_visual(enc["visual"], os.path.join(data, "visual"), manifest,
                          cfg.teach_visual, fps=ext.encoders.fps, seed=cfg.seed)
    audio = teach_audio(enc["audio"], os.path.join(data, "audio"), manifest, cfg.teach_audio,
                        seed=cfg.seed)
    encoders = dataclasses.replace(
        ext.encoders, visual=dataclasses.replace(ext.encoders.visual, name_or_path=visual),
        audio=dataclasses.replace(ext.encoders.audio, name_or_path=audio))
    extract_features.run(dataclasses.replace(ext, encoders=encoders))
    return {"model_yaml": os.path.join(enc_dir, "model.yaml"), "manifest": manifest,
            "features": os.path.join(data, "features"), **enc, "visual": visual,
            "audio": audio}


# ----------------------------------------------------------------------------- stage 3-4


def run_config(cfg: BenchConfig, spec: RunSpec, paths: dict[str, str]) -> TrainConfig:
    """The TrainConfig of one run: the tiny preset with the run's connector and streams."""
    from av_model.config import ModelConfig
    from av_model.configlib import load_config
    from av_model.tiny import tiny_model_config

    base = load_config(ModelConfig, paths["model_yaml"])
    encoders = dataclasses.replace(
        base.encoders,
        visual=dataclasses.replace(base.encoders.visual, name_or_path=paths["visual"]),
        audio=dataclasses.replace(base.encoders.audio, name_or_path=paths["audio"]))
    base = dataclasses.replace(base, encoders=encoders)
    connector = dataclasses.replace(tiny_model_config(paths, spec.connector).connector,
                                    output_norm=cfg.output_norm)
    if cfg.stream_queries and spec.connector != "linear":
        windows = {"window_s": (2.0, 1.0), "queries": (4, 2)} \
            if spec.connector == "mrc_qformer" else {}
        connector = dataclasses.replace(connector, stream_fusion="interleave",
                                        stream_queries=True, **windows)
    model = dataclasses.replace(base, connector=connector, llm=dataclasses.replace(
        base.llm, mode=cfg.llm_mode, system_prompt=cfg.system_prompt))
    mix = {"joint": 1.0 if len(spec.modalities) == 2 else 0.0,
           "video_only": 1.0 if spec.modalities == ("video",) else 0.0,
           "audio_only": 1.0 if spec.modalities == ("audio",) else 0.0}
    return from_dict(TrainConfig, {
        "name": spec.name, "stage": "instruct", "model": to_dict(model),
        "data": {"features": paths["features"], "batch_size": cfg.batch_size,
                 "turns": cfg.turns, "caption_mix": cfg.caption_mix, **mix},
        "optim": {"max_steps": cfg.steps, "lr": cfg.lr, "connector_lr": cfg.connector_lr,
                  "warmup_steps": min(10, cfg.steps // 5)},
        "deepspeed": {"enabled": False},
        "run": {"checkpoint_every": cfg.steps, "val_every": 0, "generate_samples": 0}})


def train_and_evaluate(cfg: BenchConfig, spec: RunSpec, paths: dict[str, str],
                       out: str, parent: dict[str, str] | None = None) -> dict[str, Any]:
    """Train one run in this process, then answer and score the test questions; with
    ``parent`` (``bench_report.parent_info``), log it as a nested MLflow run."""
    tcfg = run_config(cfg, spec, paths)
    label = spec.name if cfg.seeds == 1 else f"{spec.name} seed {spec.seed}"
    tracker = start_child(parent, label, spec.modalities, to_dict(tcfg)) if parent else None
    try:
        result, history = _train_and_evaluate(cfg, spec, paths, out, tcfg)
        if tracker is not None:
            finish_child(tracker, result, history, cfg.log_every)
    except BaseException:
        if tracker is not None:
            tracker.client.set_terminated(tracker.run_id, status="FAILED")
        raise
    return result


def _train_and_evaluate(cfg: BenchConfig, spec: RunSpec, paths: dict[str, str], out: str,
                        tcfg: TrainConfig) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The plain training loop on the stored features, then ``evaluate_run``; returns the
    result and the loop's metrics per step (kept in memory: logging them during training
    would count in ``train_s``)."""
    import numpy as np
    import torch

    from av_model import checkpoint as av_checkpoint
    from av_model.model import AVModel
    from pipelines.train_data import Collator, read_rows, row_epochs
    from pipelines.train_loop import LoopState, Trainer

    torch.set_num_threads(1)
    torch.manual_seed(spec.seed)
    # In clip order: the shards' row order is the extraction's completion order, which
    # differs between two builds of the same features, and with it the seed's data order.
    rows = sorted((r for r in read_rows(paths["features"], "train") if r["conversations"]),
                  key=lambda r: r["clip_id"])
    model = AVModel.build(tcfg.model, load_encoders=False)
    epochs = row_epochs(rows, Collator(model, tcfg.data, seed=spec.seed), cfg.batch_size,
                        shuffle_seed=spec.seed)
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    Trainer(model, tcfg, lambda m, p: history.append(m)).fit(
        epochs, None, LoopState(), lambda s: os.path.join(out, f"step{s}"))
    train_s = time.perf_counter() - start
    ckpt = str(av_checkpoint.save(model, os.path.join(out, "model")))
    shutil.rmtree(os.path.join(out, f"step{cfg.steps}"), ignore_errors=True)
    del model
    losses = [m["loss"] for m in history]
    return {"run": spec.name, "seed": spec.seed, "connector": spec.connector,
            "modalities": list(spec.modalities), "train_s": train_s,
            "final_loss": float(np.mean(losses[-10:])),
            "checkpoint": ckpt, **evaluate_run(cfg, spec, ckpt, paths)}, history


def evaluate_run(cfg: BenchConfig, spec: RunSpec, checkpoint: str,
                 paths: dict[str, str]) -> dict[str, Any]:
    """The evaluation job's items, predictor and scorer, in-process on stored features."""
    from pipelines import eval_report
    from pipelines.eval_config import EvalConfig
    from pipelines.eval_predict import EvalPredictor
    from pipelines.evaluate import join, load_tasks, prediction_rows

    task = {"adapter": "synthetic", "annotations": paths["manifest"], "split": "test",
            "options": {"all_questions": True}, "modalities": list(spec.modalities),
            "group_by": "family", "max_tokens": cfg.max_tokens, "features": paths["features"]}
    ecfg = from_dict(EvalConfig, {"checkpoint": checkpoint, "tasks": {"synth": task},
                                  "predictor": {"device": "cpu"}})
    items = load_tasks(ecfg)
    rows = prediction_rows(items)
    predictor = EvalPredictor(ecfg)
    start, preds = time.perf_counter(), []
    for i in range(0, len(rows), cfg.eval_batch_size):
        chunk = rows[i:i + cfg.eval_batch_size]
        out = predictor({k: [r[k] for r in chunk] for k in chunk[0]})
        preds += [dict(zip(out, v)) for v in zip(*out.values())]
    joined, _ = join(items, preds)
    result = eval_report.score("synth", ecfg.tasks["synth"], joined["synth"])
    return {"eval_s": time.perf_counter() - start, "errors": result.errors, "n": result.n,
            "accuracy": result.scores.get("accuracy", 0.0),
            "families": {f: g["accuracy"] for f, g in result.groups.items()},
            "family_n": {f: int(g["n"]) for f, g in result.groups.items()}}


def run_all(cfg: BenchConfig, paths: dict[str, str],
            parent: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every run as a Ray task (one CPU, ``parallel`` at a time), results in config order;
    each logs a nested MLflow run under ``parent`` when given."""
    import ray

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # The corpus and features are on this node's disk: the runs stay here (one node's
    # CPUs; a shared filesystem would let them spread).
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    task = ray.remote(num_cpus=1, max_retries=0,
                      scheduling_strategy=here)(train_and_evaluate)
    specs = cfg.runs()
    refs = []
    pending: list = []
    for spec in specs:
        if len(pending) >= cfg.parallel:
            _, pending = ray.wait(pending, num_returns=1)
        ref = task.remote(cfg, spec, paths, os.path.join(os.path.abspath(cfg.workdir), "runs",
                                                         spec.slug), parent)
        refs.append(ref)
        pending.append(ref)
    results = []
    for spec, ref in zip(specs, refs):
        try:
            results.append(ray.get(ref))
        except Exception as err:  # noqa: BLE001 - one failed run must not lose the others
            log.error("run %s (seed %d) failed: %s", spec.name, spec.seed, err)
            results.append({"run": spec.name, "seed": spec.seed,
                            "error": f"{type(err).__name__}: {err}"})
            continue
        log.info("%s (seed %d): %s", spec.name, spec.seed, json.dumps(results[-1]["families"]))
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import argparse

    parser = argparse.ArgumentParser(prog="avray bench-model", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML with BenchConfig fields")
    parser.add_argument("--workdir", help="where everything goes (overrides the config)")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. steps=600 synth.n=400")
    args = parser.parse_args(argv)
    extra = [f"workdir={args.workdir}"] if args.workdir else []
    cfg = jobs.parse_job_config(BenchConfig, (["--config", args.config] if args.config else [])
                                + extra + list(args.overrides), __doc__)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    tracker = start_parent(cfg)   # first: the runs nest under it
    try:
        with jobs.ray_session(cfg.ray):
            paths = prepare_data(cfg)
            timings["corpus + features"] = time.perf_counter() - start
            results = run_all(cfg, paths, parent_info(tracker, cfg))
    except BaseException:
        tracker.client.set_terminated(tracker.run_id, status="FAILED")
        raise
    timings["training + evaluation"] = time.perf_counter() - start - timings["corpus + features"]
    timings["total"] = time.perf_counter() - start
    work = os.path.abspath(cfg.workdir)
    png = plot(results, os.path.join(work, "bench_model.png"))
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    md = report(cfg, results, timings, f"avray bench-model {argv_text}".strip())
    with open(os.path.join(work, "results.md"), "w") as f:
        f.write(md)
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump({"results": results, "timings": timings}, f, indent=2)
    if cfg.results_md:
        beside = os.path.join(os.path.dirname(os.path.abspath(cfg.results_md)),
                              "bench_model.png")
        if os.path.abspath(png) != beside:
            shutil.copy(png, beside)
        write_section(cfg.results_md, md + "\n![accuracy per family](bench_model.png)\n")
    run_id = log_to_mlflow(tracker, results, md, png)
    log.info("benchmark done in %.0f s (MLflow run %s)\n%s", timings["total"], run_id,
             table(results))
    return {"results": results, "timings": timings, "run_id": run_id, "plot": png}


if __name__ == "__main__":
    main()
