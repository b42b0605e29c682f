"""The evaluation job's config: which checkpoint, which tasks, how the Ray Data pool runs.

A task is one YAML block: where its annotations and media are, which adapter reads them
(``pipelines.eval_tasks.ADAPTERS``), the prompt, the streams the model gets, the metric.
Every field is checked when the config loads, before Ray or a model starts.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Any, Literal

from av_model.configlib import ConfigError, check
from pipelines.eval_metrics import METRICS, NORMALISERS
from pipelines.jobs import RayConfig
from pipelines.train_config import TrackingConfig

MODALITIES = ("video", "audio", "image")
PROMPT_FIELDS = {"question", "choices", "letters"}
_NAME = re.compile(r"[\w.-]+")


@dataclass(frozen=True)
class TaskConfig:
    """One evaluation task (e.g. LibriSpeech ASR, NExT-QA, the synthetic sync family)."""

    adapter: str = "jsonl"        # pipelines.eval_tasks.ADAPTERS key
    annotations: str = ""         # annotation file or directory (local or s3://)
    media_root: str = ""          # media directory ("" = next to the annotations)
    split: str | None = None      # adapter-specific split filter
    options: dict[str, Any] = field(default_factory=dict)  # adapter-specific options
    # The user turn: {question}, {choices} ("(A) x (B) y"), {letters} ("A, B") are filled in.
    prompt: str = "{question}"
    # The streams the model is given, of those an item has: a video's own audio track is
    # dropped unless "audio" is listed (modality ablations use this).
    modalities: list[str] = field(default_factory=lambda: ["video", "audio", "image"])
    metric: str = "accuracy"      # wer | caption | accuracy | choice_accuracy | vqa_accuracy
    normalise: str = "answer"     # whisper_en | whisper_basic | answer | none
    match: Literal["exact", "contains"] = "exact"   # accuracy: equal, or holds the answer
    group_by: str | None = None   # an item meta key to break scores down by (e.g. family)
    limit: int | None = None      # first N items only (quick looks)
    max_tokens: int = 32          # answer length limit
    # Feature shards of the same clips (an extraction output): skip decoding and encoding.
    # Items are matched by meta["clip_id"] (else their id).
    features: str | None = None

    def __post_init__(self) -> None:
        check(bool(self.annotations), "annotations", "is required (file or directory)")
        check(self.metric in METRICS, "metric", f"unknown metric {self.metric!r} ({METRICS})")
        check(self.normalise in NORMALISERS, "normalise",
              f"unknown normaliser {self.normalise!r} ({NORMALISERS})")
        bad = [m for m in self.modalities if m not in MODALITIES]
        check(not bad and bool(self.modalities), "modalities",
              f"choose from {MODALITIES}, got {self.modalities}")
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(self.prompt) if f is not None}
        except ValueError as err:   # a stray "{" or "}"
            raise ConfigError("prompt", f"{err} (write {{{{ and }}}} for literal braces)") from None
        check(fields <= PROMPT_FIELDS, "prompt",
              f"unknown placeholders {sorted(fields - PROMPT_FIELDS)}; use {sorted(PROMPT_FIELDS)}")
        check(self.limit is None or self.limit > 0, "limit", "must be null or > 0")
        check(self.max_tokens > 0, "max_tokens", "must be > 0")
        from pipelines.eval_tasks import ADAPTERS
        check(self.adapter in ADAPTERS, "adapter",
              f"unknown adapter {self.adapter!r} (known: {sorted(ADAPTERS)})")


@dataclass(frozen=True)
class PredictorConfig:
    """The Ray Data actor pool that runs the serving predictor."""

    num_actors: int = 1           # actor pool size (one model per actor)
    batch_size: int = 8           # items per generate call
    num_cpus: float = 1.0         # per actor
    num_gpus: float = 0.0         # per actor (1 on a GPU node)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int = 1        # per actor: actors sharing a host must not oversubscribe
    max_video_s: float = 3600.0   # longer media is skipped (and listed in the errors table)

    def __post_init__(self) -> None:
        check(self.num_actors >= 1, "num_actors", "must be >= 1")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.num_cpus >= 0, "num_cpus", "must be >= 0")
        check(self.num_gpus >= 0, "num_gpus", "must be >= 0")
        check(self.torch_threads >= 1, "torch_threads", "must be >= 1")


@dataclass(frozen=True)
class EvalConfig:
    """``python -m pipelines.evaluate --config ... checkpoint=...``."""

    name: str = "avray-eval"
    checkpoint: str = ""          # a checkpoint directory, s3:// prefix, or models:/NAME/VERSION
    # Tasks by name (the name is the key, so ``tasks.asr.limit=5`` overrides one task).
    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    only: list[str] | None = None  # run just these tasks of ``tasks`` (null: all)
    output: str = "runs/eval"     # results.json, results.md, predictions/, errors.jsonl
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    log_predictions: bool = True  # per-sample predictions as MLflow tables
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        check(bool(self.checkpoint), "checkpoint", "is required (a directory, s3:// or models:/)")
        check(bool(self.tasks), "tasks", "name at least one task")
        bad = [n for n in self.tasks if not _NAME.fullmatch(n)]
        check(not bad, "tasks", f"task names {bad} may use only letters, digits, _ - . "
                                "(they name MLflow metrics)")
        unknown = sorted(set(self.only or []) - set(self.tasks))
        check(not unknown, "only", f"unknown tasks {unknown} (known: {sorted(self.tasks)})")
        check(self.only is None or bool(self.only), "only", "null (all tasks) or a task list")

    def selected(self) -> dict[str, TaskConfig]:
        """The tasks this run evaluates, in config order."""
        return {n: t for n, t in self.tasks.items() if self.only is None or n in self.only}
