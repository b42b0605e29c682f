"""The training job's config: model (preset / YAML / previous stage), data, optimisation,
DeepSpeed, scaling, checkpoints and tracking. Every field is checked before Ray starts.

The ``model`` section is *partial*: it is merged over a base, which is the checkpoint in
``init_from`` (a previous stage), else ``model_base`` (a preset name or a model YAML such as
the ``model.yaml`` that ``avray tiny`` writes). So ``model.llm.mode=lora`` switches a frozen
align checkpoint to LoRA for the instruct stage without restating the rest.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from av_model.config import MODEL_PRESETS, ModelConfig
from av_model.configlib import ConfigError, apply_overrides, check, from_dict, to_dict
from pipelines.jobs import RayConfig


@dataclass(frozen=True)
class DataConfig:
    """Feature shards and how samples are built from them."""

    features: str = ""            # an extraction output (local or s3://): reads features/
    train_split: str = "train"
    val_split: str = "val"        # rows of this split form the validation set ("" = none)
    batch_size: int = 4           # samples per worker per micro-step
    # Modality-augmented training (Audio-Visual LLM): of the samples carrying both streams,
    # these fractions are trained as joint, visual-only and audio-only (with <AUD_VIS>,
    # <VIS>, <AUD>).
    joint: float = 1.0
    video_only: float = 0.0
    audio_only: float = 0.0
    # Unpaired audio-visual mixing (video-SALMONN): a caption sample without audio gets the
    # audio of another sample in the batch with this probability; its target becomes
    # own caption + donor caption ("concat"), or stays the video's ("video").
    unpaired: float = 0.0
    unpaired_target: Literal["concat", "video"] = "concat"
    caption_prompt: str = "Describe what you see and hear in the clip."
    use_conversations: bool = True  # train on a row's conversations when it has them
    # all: a row's whole conversation is one sample. one: each visit trains one exchange
    # (user turn + its answer) drawn at random, for QA sets whose questions give each other's
    # answers away ("Which appeared first, the red circle or the blue square?" answers "What
    # colour is the circle?") or that are evaluated one question at a time.
    turns: Literal["all", "one"] = "all"
    use_captions: bool = True       # ... else on its caption
    # Captioning and QA in one run (video-SALMONN's instruction data mixes them): this
    # fraction of the samples that have both conversations and a caption train on the
    # caption instead. A caption supervises every event of the clip at once.
    caption_mix: float = 0.0
    shuffle_seed: int | None = 0    # local shuffle of rows per epoch (None = file order)
    # Hold the (filtered) shards in the object store instead of re-reading them every
    # epoch: right for small corpora, wrong for ones larger than cluster memory.
    materialize: bool = False

    def __post_init__(self) -> None:
        check(self.batch_size > 0, "batch_size", "must be > 0")
        mix = (self.joint, self.video_only, self.audio_only)
        check(min(mix) >= 0 and sum(mix) > 0, "joint",
              "joint, video_only and audio_only must be >= 0 and not all 0")
        check(0.0 <= self.unpaired <= 1.0, "unpaired", "must be in [0, 1]")
        check(self.use_conversations or self.use_captions, "use_captions",
              "use_conversations and use_captions cannot both be false")
        check(0.0 <= self.caption_mix <= 1.0, "caption_mix", "must be in [0, 1]")
        check(self.caption_mix == 0 or (self.use_captions and self.use_conversations),
              "caption_mix", "mixes conversations and captions: needs use_conversations and "
              "use_captions")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    # The connector's own learning rate (LLaVA's mm_projector_lr); None = lr. A connector
    # trained from scratch can want more than the LLM (or its LoRA) beside it.
    connector_lr: float | None = None
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    max_steps: int = 100          # optimizer steps; the run ends exactly here
    min_lr_ratio: float = 0.1     # cosine floor as a fraction of lr
    grad_accum: int = 1
    grad_clip: float = 1.0        # 0 = off
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", "must be > 0")
        check(self.connector_lr is None or self.connector_lr > 0, "connector_lr",
              "must be > 0 or null")
        check(self.max_steps > 0, "max_steps", "must be > 0")
        check(0 <= self.warmup_steps <= self.max_steps, "warmup_steps",
              "must be in [0, max_steps]")
        check(self.grad_accum > 0, "grad_accum", "must be > 0")
        check(self.grad_clip >= 0, "grad_clip", "must be >= 0")
        check(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", "must be in [0, 1]")


@dataclass(frozen=True)
class DeepSpeedConfig:
    enabled: bool = True          # false: plain torch (single worker, or DDP via Ray Train)
    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_params: bool = False  # ZeRO-3 only
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"

    def __post_init__(self) -> None:
        check(self.zero_stage in (0, 1, 2, 3), "zero_stage", "must be 0, 1, 2 or 3")
        check(not self.offload_params or self.zero_stage == 3, "offload_params",
              "parameter offload needs zero_stage 3")
        check(not self.offload_optimizer or self.zero_stage >= 1, "offload_optimizer",
              "optimizer offload needs zero_stage 1, 2 or 3")


@dataclass(frozen=True)
class ScalingConfig:
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 0.5  # leave CPU for Ray Data on small hosts (PITFALLS)
    torch_threads: int = 1        # per worker: two busy processes per core at most

    def __post_init__(self) -> None:
        check(self.num_workers > 0, "num_workers", "must be > 0")
        check(self.cpus_per_worker > 0, "cpus_per_worker", "must be > 0")
        check(self.torch_threads > 0, "torch_threads", "must be > 0")


@dataclass(frozen=True)
class RunConfig:
    storage_path: str = "runs"    # Ray Train storage (local or s3://)
    max_failures: int = 2         # worker failures Ray Train restarts from the last checkpoint
    checkpoint_every: int = 50    # steps (and always at the end)
    keep_best: int = 2            # checkpoints kept, by validation loss
    val_every: int = 50           # steps; 0 = only at the end
    val_batches: int = 8          # batches per validation pass (0 = the whole split)
    generate_samples: int = 2     # answers generated per validation, logged as text

    def __post_init__(self) -> None:
        check(self.max_failures >= 0, "max_failures", "must be >= 0")
        check(self.checkpoint_every > 0, "checkpoint_every", "must be > 0")
        check(self.keep_best > 0, "keep_best", "must be > 0")
        check(self.val_every >= 0 and self.val_batches >= 0, "val_every", "must be >= 0")


@dataclass(frozen=True)
class TrackingConfig:
    uri: str | None = None        # MLflow tracking URI; None: MLFLOW_TRACKING_URI, else local
    experiment: str | None = None  # default: the job name
    register_as: str | None = None  # registered model name for the final checkpoint


@dataclass(frozen=True)
class TrainConfig:
    name: str = "avray-train"
    stage: Literal["align", "instruct"] = "align"
    model_base: str = ""          # preset name or model YAML (when init_from is empty)
    init_from: str = ""           # a previous stage's checkpoint (dir, s3://, models:/)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        check(bool(self.name), "name", "must not be empty")
        check(bool(self.data.features), "data.features", "must name an extraction output")
        mode = self.model.llm.mode
        if self.stage == "align":
            check(mode == "frozen", "stage",
                  f"align trains the connector only: needs model.llm.mode=frozen, got {mode}")
        else:
            check(mode in ("lora", "full"), "stage",
                  f"instruct trains the LLM too: needs model.llm.mode lora or full, got {mode}")
        ds = self.deepspeed
        if ds.precision == "fp16":
            check(ds.enabled, "deepspeed.precision",
                  "fp16 needs DeepSpeed's loss scaling (deepspeed.enabled=true)")
            # DeepSpeed's CPU accelerator supports fp32 and bf16 only.
            check(self.scaling.use_gpu, "deepspeed.precision",
                  "fp16 needs a GPU (scaling.use_gpu=true); on CPU use bf16 or fp32")
        check(ds.enabled or not (ds.offload_optimizer or ds.offload_params),
              "deepspeed.offload_optimizer" if ds.offload_optimizer else "deepspeed.offload_params",
              "offload is DeepSpeed's (deepspeed.enabled=true)")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _model_base(data: dict[str, Any]) -> dict[str, Any]:
    """The base model config dict: previous stage's avray.yaml, a preset, or a YAML file."""
    init, base = data.get("init_from") or "", data.get("model_base") or ""
    if init:
        from pipelines.checkpoints import local_config

        # The config alone: each worker loads the weights later (train.build_model).
        with local_config(init) as path:
            return yaml.safe_load((Path(path) / "avray.yaml").read_text())
    if base in MODEL_PRESETS:
        return to_dict(MODEL_PRESETS[base])
    if base:
        if not Path(base).is_file():
            raise ConfigError("model_base", f"not a preset ({sorted(MODEL_PRESETS)}) nor a "
                              f"model YAML file: {base!r}")
        return yaml.safe_load(Path(base).read_text()) or {}
    raise ConfigError("model_base", "set model_base (a preset or model YAML) or init_from")


def load_train_config(path: str | None, overrides: list[str] | None = None) -> TrainConfig:
    """YAML + dotted overrides, with the partial ``model`` section merged over its base."""
    data = yaml.safe_load(Path(path).read_text()) if path else {}
    data = apply_overrides(data or {}, overrides)
    data["model"] = _merge(_model_base(data), data.get("model") or {})
    return from_dict(TrainConfig, data)
