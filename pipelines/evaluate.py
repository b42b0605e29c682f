"""Evaluate a checkpoint on AVEB-style tasks: Ray Data batch inference with the serving
predictor, metrics per task, tables to MLflow and to files.

    python -m pipelines.evaluate --config pipelines/configs/evaluate/synthetic.yaml \\
        checkpoint=runs/tiny/checkpoint tasks.synth_qa.annotations=data/synth/manifest.jsonl
    python -m pipelines.evaluate --config pipelines/configs/evaluate/aveb.yaml \\
        checkpoint=models:/avray-favor/3 only=[librispeech,audiocaps] predictor.num_gpus=1
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python -m pipelines.evaluate \\
        --config pipelines/configs/evaluate/aveb.yaml checkpoint=s3://bucket/ckpt

Flow: each task's adapter (``pipelines.eval_tasks``) reads its annotations on the driver
(a missing file fails here, before Ray starts, naming the task) → one Ray Data dataset of
items → ``map_batches(EvalPredictor)`` on an actor pool → predictions joined back to the
references on the driver → ``eval_report``: ``results.json``, ``results.md``,
``predictions/<task>.jsonl``, ``errors.jsonl`` under ``output``, and one MLflow run with
the metrics (``task.metric``, ``task.group.metric``), the tables and per-sample predictions.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from av_model.configlib import ConfigError, to_dict
from pipelines import eval_report, jobs, storage
from pipelines.checkpoints import check_reference
from pipelines.eval_config import EvalConfig, TaskConfig
from pipelines.eval_tasks import load_items
from pipelines.eval_tasks.base import AnnotationSource

log = logging.getLogger("avray.evaluate")


def prompt_text(task: TaskConfig, item: dict[str, Any]) -> str:
    """The task's prompt with the item's question and lettered options filled in."""
    letters = [chr(ord("A") + i) for i in range(len(item["choices"]))]
    choices = "\n".join(f"({x}) {c}" for x, c in zip(letters, item["choices"]))
    return task.prompt.format(question=item["question"], choices=choices,
                              letters=", ".join(letters)).strip()


def check_answers(name: str, task: TaskConfig, items: list[dict[str, Any]]) -> None:
    """vqa_accuracy counts the annotators who gave an answer (``meta.answers``, VQA's ten).
    Scored against an item's distinct references instead, one reference always scores 0
    (no *other* annotator agrees): such a task fails here, not as a score near zero."""
    if task.metric != "vqa_accuracy":
        return
    lacking = [it["id"] for it in items if not json.loads(it["meta"]).get("answers")]
    if lacking:
        raise ConfigError(f"tasks.{name}.metric",
                          f"vqa_accuracy needs each item's meta.answers (every annotator's "
                          f"answer); {len(lacking)} of {len(items)} items have none (first: "
                          f"{lacking[0]!r}); use accuracy to score against references")


def load_tasks(cfg: EvalConfig) -> dict[str, list[dict[str, Any]]]:
    """Every selected task's items, prompts filled in; an unreadable annotation source is a
    config error naming the task."""
    out = {}
    for name, task in cfg.selected().items():
        src = AnnotationSource(task.annotations, task.media_root, task.split,
                               dict(task.options))
        try:
            items = load_items(task.adapter, src, task.limit)
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError(f"tasks.{name}.annotations",
                              f"{task.adapter} adapter could not read {task.annotations}: "
                              f"{err}") from None
        if not items:
            raise ConfigError(f"tasks.{name}", f"no items in {task.annotations} "
                                               f"(split {task.split!r})")
        check_answers(name, task, items)
        for it in items:
            it["prompt"] = prompt_text(task, it)
        out[name] = items
        log.info("task %s: %d items (%s)", name, len(items), task.adapter)
    return out


def preflight(cfg: EvalConfig) -> dict[str, list[dict[str, Any]]]:
    """Checkpoint, stored features and every task's annotations, before Ray starts."""
    from pipelines import shards

    jobs.check_durable_path("output", cfg.output)
    check_reference(cfg.checkpoint)
    for name, task in cfg.selected().items():
        if task.features and not storage.exists(storage.join(task.features,
                                                             shards.FEATURES_DIR)):
            raise ConfigError(f"tasks.{name}.features",
                              f"no feature shards under {task.features}")
    return load_tasks(cfg)


def prediction_rows(items: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """What the predictor needs of each item (references stay on the driver)."""
    def url(uri: str | None) -> str | None:   # relative paths are the driver's, not an actor's
        return storage.as_url(uri) if uri else None

    return [{"task": name, "id": it["id"], "video": url(it["video"]), "audio": url(it["audio"]),
             "image": url(it["image"]), "text": it["prompt"],
             "history": json.dumps(it["history"]),
             "clip_id": str(json.loads(it["meta"]).get("clip_id", it["id"]))}
            for name, task_items in items.items() for it in task_items]


def predict(cfg: EvalConfig, items: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Ray Data: items → EvalPredictor actor pool → prediction rows."""
    import ray
    from ray.data import ActorPoolStrategy

    from pipelines.eval_predict import EvalPredictor

    p = cfg.predictor
    ds = ray.data.from_items(prediction_rows(items)).map_batches(
        EvalPredictor, fn_constructor_args=(cfg,), batch_size=p.batch_size,
        compute=ActorPoolStrategy(size=p.num_actors), num_cpus=p.num_cpus,
        num_gpus=p.num_gpus, batch_format="numpy")
    return ds.take_all()


def join(items: dict[str, list[dict[str, Any]]], predictions: list[dict[str, Any]]
         ) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """References + predictions per task, and the errors table (one row per failed item)."""
    by_key = {(p["task"], p["id"]): p for p in predictions}
    joined, errors = {}, []
    for name, task_items in items.items():
        rows = []
        for it in task_items:
            p = by_key.get((name, it["id"]))
            err = "no prediction came back" if p is None else p["error"]
            rows.append({**it, "prediction": None if p is None else p["prediction"],
                         "finish_reason": None if p is None else p["finish_reason"],
                         "error": err})
            if err is not None:
                errors.append({"task": name, "id": it["id"], "video": it["video"],
                               "audio": it["audio"], "image": it["image"], "error": err})
        joined[name] = rows
    return joined, errors


def evaluate(cfg: EvalConfig, items: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Predict, score, write the files, log the MLflow run; the summary dict is returned."""
    from pipelines.tracking import Tracker

    joined, errors = join(items, predict(cfg, items))
    eval_report.write_unscored(cfg.output, joined, errors)   # a metric failure loses nothing
    tasks = cfg.selected()
    results = [eval_report.score(name, tasks[name], rows) for name, rows in joined.items()]
    paths = eval_report.write(cfg.output, results, errors, cfg.checkpoint)
    local_root = "runs" if storage.is_s3(cfg.output) else cfg.output
    tracker = Tracker(cfg.tracking.uri, local_root, cfg.tracking.experiment or cfg.name,
                      run_name=cfg.name)
    try:
        tracker.log_params(to_dict(cfg))
        tracker.client.set_tag(tracker.run_id, "avray.checkpoint", cfg.checkpoint)
        eval_report.log_mlflow(tracker, results, errors, cfg.checkpoint, cfg.log_predictions)
    except Exception:
        tracker.client.set_terminated(tracker.run_id, status="FAILED")
        raise
    tracker.client.set_terminated(tracker.run_id)
    for r in results:
        key, value = r.primary
        log.info("%-20s %-12s %s %.4f  (n=%d, errors=%d)", r.name, r.modality, key, value,
                 r.n, r.errors)
    return {"run_id": tracker.run_id, "tracking_uri": tracker.tracking_uri, "files": paths,
            "tasks": {r.name: r.summary() for r in results}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = jobs.parse_job_config(EvalConfig, argv, __doc__)
    items = jobs.checked(preflight, cfg)
    with jobs.ray_session(cfg.ray):
        summary = evaluate(cfg, items)
    log.info("results in %s (MLflow run %s)", summary["files"]["markdown"], summary["run_id"])
    return summary


if __name__ == "__main__":
    main()
