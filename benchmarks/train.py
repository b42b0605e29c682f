"""Training step time: plain torch vs the DeepSpeed loop vs Ray Train + DeepSpeed, one run.

All modes train the same model (tiny encoders' features, a 4-layer 256-wide random Llama,
full fine-tuning, the tiny causal Q-Former) on the same feature shards with the same batches
(file order, no shuffle: a shuffled run pads other batches and is not comparable), once per
per-worker batch size in ``--batches``:

  plain        pipelines.train_loop without DeepSpeed, one process, rows in memory
  ds-zero1/2   the same loop on a one-process DeepSpeed engine (gloo, CPU)
  ray-zero2    the training job (TorchTrainer, 1 worker, ZeRO-2, streaming shards)
  ray-zero2x2  the training job with 2 workers (global batch doubles: samples/s is the
               comparable figure)

Step time is the median over steps after the first ``--warmup`` (first steps pay JIT and
allocator costs); for Ray modes it comes from the run's per-step metrics (MLflow store), so
it excludes the ~25 s Ray Train start-up, which is reported separately as wall time. The
in-process modes also split the step into forward and backward + optimizer step.

    python -m benchmarks.train [--steps 30] [--batches 4,8,16] [--clips 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time

import torch

from benchmarks.report import emit

log = logging.getLogger("benchmarks.train")
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "pipelines", "configs")
TRAIN = os.path.join(CONFIGS, "train", "tiny-instruct.yaml")


def _prepare(work: str, clips: int) -> dict[str, str]:
    """Tiny encoders + a bench LLM, a synthetic corpus and its feature shards."""
    from av_model.tiny import TinySizes, save_tiny_llm, save_tiny_models
    from pipelines import extract_features
    from pipelines.corpora import synthetic

    paths = save_tiny_models(os.path.join(work, "tiny"))
    save_tiny_llm(os.path.join(work, "tiny", "llm"), TinySizes(llm_dim=256, llm_layers=4), 0)
    cfg = synthetic.SynthConfig(n=clips, seed=1, min_duration_s=8.0, max_duration_s=9.0,
                                speech=False, split_fractions={"train": 1.0})
    synthetic.generate(cfg, os.path.join(work, "synth"))
    extract_features.main([
        "--config", os.path.join(CONFIGS, "extract", "tiny.yaml"),
        f"corpus.path={work}/synth/manifest.jsonl", f"output={work}/features",
        f"encoders.visual.name_or_path={paths['visual']}",
        f"encoders.audio.name_or_path={paths['audio']}", "ray.progress_bars=false"])
    return {"model_yaml": os.path.join(work, "tiny", "model.yaml"),
            "features": os.path.join(work, "features")}


def _overrides(prep: dict[str, str], steps: int, batch: int) -> list[str]:
    return [f"model_base={prep['model_yaml']}", f"data.features={prep['features']}",
            "model.llm.mode=full", f"optim.max_steps={steps}", f"data.batch_size={batch}",
            f"run.checkpoint_every={steps}", "run.val_every=0", "run.generate_samples=0",
            "data.val_split=", "data.materialize=true", "ray.progress_bars=false",
            # The same batches in every mode: file order, and the collator's per-sample
            # draws (modality, conversation) from the same seed 0 on the same rows.
            "data.shuffle_seed=null"]


def _in_process(prep, steps: int, batch: int, warmup: int, ds: bool, stage: int) -> dict:
    """The loop in this process: times every optimizer step."""
    from av_model.model import AVModel
    from pipelines.train import preflight
    from pipelines.train_config import load_train_config
    from pipelines.train_data import Collator, read_rows, row_epochs
    from pipelines.train_loop import LoopState, Trainer

    cfg, _ = preflight(load_train_config(
        TRAIN, _overrides(prep, steps, batch) + [f"deepspeed.enabled={str(ds).lower()}",
                                          f"deepspeed.zero_stage={stage}"]))
    torch.manual_seed(0)
    model = AVModel.build(cfg.model, load_encoders=False)
    rows = read_rows(prep["features"], "train")
    stamps: list[float] = []
    waits: list[float] = []
    tokens: list[float] = []

    def report(metrics, path):
        stamps.append(time.perf_counter())
        waits.append(metrics["data_wait_fraction"])
        tokens.append(metrics["tokens_per_s"])

    epochs = row_epochs(rows, Collator(model, cfg.data), batch)
    trainer = Trainer(model, cfg, report)
    phases = _time_phases(trainer.engine)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        trainer.fit(epochs, None, LoopState(), lambda s: os.path.join(tmp, str(s)))
    steps_s = [b - a for a, b in zip([start] + stamps, stamps)][warmup:-1]  # last: checkpoint
    return {"step_s": statistics.median(steps_s), "samples_per_s": batch / statistics.median(steps_s),
            "tokens_per_s": statistics.median(tokens[warmup:-1]),
            "data_wait_fraction": statistics.median(waits[warmup:-1]),
            **{f"{k}_s": statistics.median(v[warmup:-1]) for k, v in phases.items()}}


def _time_phases(engine) -> dict[str, list[float]]:
    """Wrap the engine's forward and backward + optimizer step with timers: where a mode's
    extra time goes (DeepSpeed's gradient buckets show up in the second)."""
    phases: dict[str, list[float]] = {"forward": [], "backward_and_step": []}

    def timed(fn, key):
        def wrapper(*args):
            t0 = time.perf_counter()
            out = fn(*args)
            phases[key].append(time.perf_counter() - t0)
            return out
        return wrapper
    engine.forward = timed(engine.forward, "forward")
    engine.backward_step = timed(engine.backward_step, "backward_and_step")
    return phases


def _ray(prep, steps: int, batch: int, warmup: int, workers: int, work: str) -> dict:
    from mlflow.tracking import MlflowClient

    from pipelines import train

    name = f"bench-{workers}w-b{batch}"  # a new name: Ray Train resumes a same-named run
    start = time.perf_counter()
    train.main(["--config", TRAIN, *_overrides(prep, steps, batch), f"name={name}", "deepspeed.zero_stage=2",
                f"scaling.num_workers={workers}", f"run.storage_path={work}/runs"])
    wall = time.perf_counter() - start
    client = MlflowClient(f"sqlite:///{work}/runs/mlflow.db")
    exp = client.get_experiment_by_name(name)
    (run,) = client.search_runs([exp.experiment_id])

    def series(key):
        return [m.value for m in sorted(client.get_metric_history(run.info.run_id, key),
                                        key=lambda m: m.step)][warmup:-1]
    sps = statistics.median(series("samples_per_s"))
    return {"step_s": batch * workers / sps, "samples_per_s": sps,
            "tokens_per_s": statistics.median(series("tokens_per_s")),
            "data_wait_fraction": statistics.median(series("data_wait_fraction")),
            "wall_s_including_startup": wall}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batches", default="4,8,16",
                        help="per-worker batch sizes, comma-separated: DeepSpeed's cost is "
                             "mostly per step, so its share shrinks as the step grows")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "avray-bench-train"))
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT="29541",
                      RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    torch.set_num_threads(1)
    prep = _prepare(args.workdir, args.clips)
    s, w = args.steps, args.warmup
    results = {}
    for b in (int(x) for x in args.batches.split(",")):
        modes = {"plain": _in_process(prep, s, b, w, ds=False, stage=0),
                 "ds-zero1": _in_process(prep, s, b, w, ds=True, stage=1),
                 "ds-zero2": _in_process(prep, s, b, w, ds=True, stage=2),
                 "ray-zero2": _ray(prep, s, b, w, 1, args.workdir),
                 "ray-zero2x2": _ray(prep, s, b, w, 2, args.workdir)}
        base = modes["plain"]
        for r in modes.values():
            r["step_time_vs_plain"] = r["step_s"] / base["step_s"]
            r["samples_per_s_vs_plain"] = r["samples_per_s"] / base["samples_per_s"]
            r["tokens_per_s_vs_plain"] = r["tokens_per_s"] / base["tokens_per_s"]
        results[f"batch_{b}"] = modes
    report = {"machine": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
              "steps": s, "warmup": w, "results": results}
    return emit(report, args.json)


if __name__ == "__main__":
    main()
