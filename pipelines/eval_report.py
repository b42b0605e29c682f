"""Scores, tables and where they go: JSON and Markdown files, and the MLflow run.

A task's score is its metric over the items that got an answer; items whose media could not
be used are counted (``errors``) and listed in ``errors.jsonl``, never silently dropped.
The per-modality table groups tasks by the streams their items gave the model (audio,
image, video, audio+video), as the AVEB tables do. A metric this machine could not compute
(METEOR without Java, SPICE without CoreNLP) or computed approximately is listed with the
reason under the task's ``skipped``, in both files and as MLflow tags: an absent column or
a shifted score must say why.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from pipelines import eval_metrics as metrics
from pipelines import storage
from pipelines.eval_config import TaskConfig

log = logging.getLogger(__name__)

SAMPLE_KEYS = ("id", "prompt", "prediction", "references", "choices", "score", "error",
               "finish_reason")
PRIMARY = {"wer": "wer", "caption": "cider", "accuracy": "accuracy",
           "choice_accuracy": "accuracy", "vqa_accuracy": "vqa_accuracy"}


@dataclass
class TaskResult:
    """One task's aggregate scores, breakdown and per-sample rows."""

    name: str
    metric: str
    modality: str
    n: int
    errors: int
    scores: dict[str, float]
    groups: dict[str, dict[str, float]] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)   # metric → why absent/approximate

    @property
    def primary(self) -> tuple[str, float]:
        key = PRIMARY[self.metric]
        return key, self.scores.get(key, float("nan"))

    def summary(self) -> dict[str, Any]:
        return {"metric": self.metric, "modality": self.modality, "n": self.n,
                "errors": self.errors, "primary": self.primary[0], "scores": self.scores,
                "groups": self.groups, "skipped": self.skipped}


def compute(task: TaskConfig, items: list[dict[str, Any]]) -> tuple[dict[str, float], list[float]]:
    """Run the task's metric over items that carry a ``prediction``."""
    preds = [it["prediction"] for it in items]
    refs = [it["references"] for it in items]
    if task.metric == "wer":
        return metrics.wer(preds, [r[0] for r in refs], task.normalise)
    if task.metric == "caption":
        return metrics.caption(preds, refs)
    if task.metric == "choice_accuracy":
        return metrics.choice_accuracy(preds, refs, [it["choices"] for it in items],
                                       task.normalise)
    if task.metric == "vqa_accuracy":
        answers = [json.loads(it["meta"])["answers"] for it in items]  # evaluate.check_answers
        return metrics.vqa_accuracy(preds, answers, task.normalise)
    return metrics.accuracy(preds, refs, task.normalise, task.match)


def modality(task: TaskConfig, items: list[dict[str, Any]]) -> str:
    """The streams a task's items give the model, e.g. "audio+video"."""
    used = set()
    for it in items:
        if it.get("image") and "image" in task.modalities:
            used.add("image")
        if it.get("video") and "video" in task.modalities:
            used.add("video")
        if (it.get("audio") or it.get("video")) and "audio" in task.modalities:
            used.add("audio")
    return "+".join(sorted(used)) or "none"


def skipped_metrics(name: str, task: TaskConfig) -> dict[str, str]:
    """What the task's metric cannot compute here, logged once for the task (its groups
    would repeat it)."""
    skipped = metrics.caption_skips() if task.metric == "caption" else {}
    for metric, reason in skipped.items():
        log.warning("task %s: %s %s", name, metric, reason)
    return skipped


def score(name: str, task: TaskConfig, items: list[dict[str, Any]]) -> TaskResult:
    """Aggregate and per-group scores; every item appears in ``samples``."""
    answered = [it for it in items if it.get("error") is None]
    skipped = skipped_metrics(name, task) if answered else {}
    agg, per = compute(task, answered) if answered else ({}, [])
    for it, s in zip(answered, per):
        it["score"] = s
    groups: dict[str, dict[str, float]] = {}
    if task.group_by and answered:
        keys = [str(json.loads(it["meta"]).get(task.group_by)) for it in answered]
        for key in sorted(set(keys)):
            subset = [it for it, k in zip(answered, keys) if k == key]
            g_agg, _ = compute(task, subset)
            groups[key] = {**g_agg, "n": float(len(subset))}
    samples = [{k: it.get(k) for k in SAMPLE_KEYS} for it in items]
    return TaskResult(name, task.metric, modality(task, items), len(answered),
                      len(items) - len(answered), agg, groups, samples, skipped)


# ----------------------------------------------------------------------------- tables


def _fmt(value: float) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown(results: list[TaskResult], checkpoint: str) -> str:
    """Per-task table, per-modality table and the group breakdowns."""
    lines = [f"# Evaluation of `{checkpoint}`", "",
             "| task | modality | metric | score | n | errors | all scores |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        key, value = r.primary
        rest = ", ".join(f"{k} {_fmt(v)}" for k, v in r.scores.items() if k != key)
        lines.append(f"| {r.name} | {r.modality} | {key} | {_fmt(value)} | {r.n} | "
                     f"{r.errors} | {rest} |")
    lines += ["", "## By modality", "", "| modality | task | metric | score |",
              "|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r.modality, r.name)):
        key, value = r.primary
        lines.append(f"| {r.modality} | {r.name} | {key} | {_fmt(value)} |")
    for r in results:
        if r.groups:
            key = r.primary[0]
            lines += ["", f"## {r.name} by group", "", f"| group | {key} | n |", "|---|---|---|"]
            lines += [f"| {g} | {_fmt(s.get(key, float('nan')))} | {int(s['n'])} |"
                      for g, s in r.groups.items()]
    skipped = [(r.name, m, why) for r in results for m, why in r.skipped.items()]
    if skipped:
        lines += ["", "## Skipped or approximated metrics", "", "| task | metric | reason |",
                  "|---|---|---|"]
        lines += [f"| {t} | {m} | {why.replace('|', '/')} |" for t, m, why in skipped]
    return "\n".join(lines) + "\n"


def flat_metrics(results: list[TaskResult]) -> dict[str, float]:
    """MLflow metric names: ``task.metric`` and ``task.group.metric``."""
    out: dict[str, float] = {}
    for r in results:
        out.update({f"{r.name}.{k}": v for k, v in r.scores.items()})
        out[f"{r.name}.errors"] = float(r.errors)
        for g, scores in r.groups.items():
            out.update({f"{r.name}.{metric_name(g)}.{k}": v for k, v in scores.items()})
    return out


def metric_name(text: str) -> str:
    """A group value as an MLflow metric name part ("['Audio-Visual', 'Counting']" →
    "Audio-Visual_Counting"): MLflow accepts letters, digits, _ - . space : /."""
    return re.sub(r"[_ ]*_[_ ]*", "_", re.sub(r"[^\w.\- :/]", "_", text)).strip("_ ") or "_"


def write(output: str, results: list[TaskResult], errors: list[dict[str, Any]],
          checkpoint: str) -> dict[str, str]:
    """results.json, results.md, predictions/<task>.jsonl, errors.jsonl under ``output``."""
    storage.makedirs(output)
    paths = {"json": storage.join(output, "results.json"),
             "markdown": storage.join(output, "results.md"),
             "errors": storage.join(output, "errors.jsonl")}
    summary = {"checkpoint": checkpoint, "tasks": {r.name: r.summary() for r in results}}
    storage.write_bytes_atomic(paths["json"], json.dumps(summary, indent=2).encode())
    storage.write_bytes_atomic(paths["markdown"], markdown(results, checkpoint).encode())
    storage.write_bytes_atomic(paths["errors"], _jsonl(errors))
    storage.makedirs(storage.join(output, "predictions"))
    for r in results:
        storage.write_bytes_atomic(storage.join(output, "predictions", f"{r.name}.jsonl"),
                                   _jsonl(r.samples))
    return paths


def write_unscored(output: str, joined: dict[str, list[dict[str, Any]]],
                   errors: list[dict[str, Any]]) -> None:
    """Predictions and errors as soon as they exist (``write`` replaces them, scored)."""
    storage.makedirs(storage.join(output, "predictions"))
    storage.write_bytes_atomic(storage.join(output, "errors.jsonl"), _jsonl(errors))
    for name, rows in joined.items():
        storage.write_bytes_atomic(storage.join(output, "predictions", f"{name}.jsonl"),
                                   _jsonl([{k: r.get(k) for k in SAMPLE_KEYS} for r in rows]))


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def log_mlflow(tracker, results: list[TaskResult], errors: list[dict[str, Any]],
               checkpoint: str, log_predictions: bool) -> None:
    """Metrics, the tables as artifacts, and per-sample predictions as MLflow tables."""
    tracker.log_metrics(flat_metrics(results), step=0)
    client, run = tracker.client, tracker.run_id
    client.log_dict(run, {"checkpoint": checkpoint,
                          "tasks": {r.name: r.summary() for r in results}}, "results.json")
    client.log_text(run, markdown(results, checkpoint), "results.md")
    client.log_text(run, _jsonl(errors).decode(), "errors.jsonl")
    for r in results:
        for metric, why in r.skipped.items():
            client.set_tag(run, f"avray.skipped.{r.name}.{metric}", why[:5000])
    for r in results if log_predictions else []:
        if r.samples:
            columns = {k: [json.dumps(s[k]) if isinstance(s[k], list) else s[k]
                           for s in r.samples] for k in r.samples[0]}
            client.log_table(run, data=columns, artifact_file=f"predictions/{r.name}.json")
