"""Training: Ray Train (TorchTrainer) + DeepSpeed ZeRO on the feature shards ingest wrote.

Each worker streams its shard of the parquet features (``get_dataset_shard``), collates
prompts through ``av_model.processor``, and runs ``pipelines.train_loop`` (plain torch,
tested without Ray). Checkpoints go through ``ray.train.report``; the best ``run.keep_best``
by validation loss are kept; a restarted worker group resumes from the latest with its
optimizer, scheduler and data position. Rank 0 logs to MLflow and registers the final model.

    python -m pipelines.train --config pipelines/configs/train/tiny-align.yaml \\
        data.features=data/quickstart/features model_base=data/quickstart/tiny/model.yaml
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python -m pipelines.train \\
        --config pipelines/configs/train/favor-instruct.yaml \\
        init_from=s3://bucket/runs/favor-align/checkpoint_000009/model \\
        data.features=s3://bucket/features/webvid scaling.num_workers=8 scaling.use_gpu=true
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import tempfile
from typing import Any

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from av_model.config import EncodersConfig, FeatureDims
from av_model.configlib import ConfigError, from_dict, to_dict
from pipelines import jobs, storage
from pipelines.train_config import TrainConfig, load_train_config
from pipelines.train_data import COLUMNS

log = logging.getLogger("avray.train")


def feature_columns(features: str) -> list[str]:
    """The columns the collator reads that these shards have (audio_events is optional)."""
    fs, path = storage.filesystem(storage.join(features, "features"))
    schema = pads.dataset(path, filesystem=fs, format="parquet").schema
    return [c for c in COLUMNS if c in schema.names]


def _shard_dims(features: str, meta: dict[str, Any], columns: list[str]) -> FeatureDims:
    """Feature sizes read off one stored row (video T×Nv×Dv, audio A×Da [+ events E×De])."""
    from pipelines.shards import TENSOR_COLUMNS

    first = storage.list_files(storage.join(features, "features"), ".parquet")[0]
    fs, path = storage.filesystem(first)
    table = pq.ParquetFile(path, filesystem=fs).read_row_group(0, columns=[
        c for c in TENSOR_COLUMNS if c in columns])
    shapes = {c: _first_nonempty(table.column(c)) for c in table.column_names}
    if shapes.get("video") is None or shapes.get("audio") is None:
        raise ConfigError("data.features", "cannot read feature sizes: the first shard has no "
                          "clip with both video and audio")
    events = shapes.get("audio_events")
    return FeatureDims(video_dim=shapes["video"][2], video_tokens=shapes["video"][1],
                       audio_dim=shapes["audio"][1] + (events[1] if events else 0),
                       audio_rate=float(meta.get("audio_rate_hz") or 50.0))


def _first_nonempty(column) -> tuple[int, ...] | None:
    for arr in column.chunk(0).to_numpy():
        if np.asarray(arr).shape[0] > 0:
            return tuple(np.asarray(arr).shape)
    return None


def preflight(cfg: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """I/O checks before Ray: shards exist; the model's encoders, fps and feature sizes are
    the ones the shards were made with (features define them). Returns (config, columns)."""
    from pipelines.shards import read_feature_metadata

    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not cfg.tracking.uri and env_uri:
        # Rank 0 logs from a worker, whose environment may lack the driver's variable
        # (`ray job submit` sets it for the driver only): pin the driver's choice.
        cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, uri=env_uri))
    jobs.check_durable_path("run.storage_path", cfg.run.storage_path)
    if not storage.list_files(storage.join(cfg.data.features, "features"), ".parquet"):
        raise ConfigError("data.features", f"no feature shards under {cfg.data.features}/features")
    if storage.is_s3(cfg.run.storage_path) and not cfg.tracking.uri:
        raise ConfigError("tracking.uri", "an s3:// run.storage_path needs an MLflow server "
                          "(tracking.uri or MLFLOW_TRACKING_URI): a local store on one worker "
                          "would be lost with it")
    _check_splits(cfg.data, cfg.scaling.num_workers)
    meta = read_feature_metadata(cfg.data.features)
    model = cfg.model
    if meta.get("encoders"):
        shard_enc = from_dict(EncodersConfig, meta["encoders"])
        if shard_enc != model.encoders:
            log.warning("the shards were made with other encoders than model.encoders; "
                        "training (and the checkpoint) uses the shards' encoders")
            model = dataclasses.replace(model, encoders=shard_enc)
    columns = feature_columns(cfg.data.features)
    dims = _shard_dims(cfg.data.features, meta, columns)
    if model.dims.resolved and model.dims != dims:
        raise ConfigError("model.dims", f"{model.dims} but the shards hold {dims}")
    return dataclasses.replace(cfg, model=dataclasses.replace(model, dims=dims)), columns


def _check_splits(data, workers: int) -> None:
    """The train split, and a named validation split, need a row for every worker: Ray
    Train splits them equally, so a worker without validation rows would report a
    val_loss of 0.0 and rank every checkpoint best (run.keep_best)."""
    from pipelines.shards import split_counts

    counts = split_counts(data.features)
    for field, split, hint in (
            ("data.train_split", data.train_split, ""),
            ("data.val_split", data.val_split, ' (data.val_split="" trains without validation)')):
        if split and counts.get(split, 0) < workers:
            raise ConfigError(field, f"{counts.get(split, 0)} rows of split {split!r} in "
                                     f"{data.features}, fewer than the {workers} workers "
                                     f"(scaling.num_workers); the shards hold "
                                     f"{counts or 'no rows'}{hint}")


def build_model(cfg: TrainConfig):
    """The AVModel in training mode; from the previous stage's weights when ``init_from``."""
    from safetensors.torch import load_file

    from av_model.checkpoint import CONNECTOR_FILE
    from av_model.model import AVModel
    from pipelines.checkpoints import local_checkpoint

    if not cfg.init_from:
        return AVModel.build(cfg.model, load_encoders=False)
    with local_checkpoint(cfg.init_from) as path:
        llm_dir, adapter = os.path.join(path, "llm"), os.path.join(path, "adapter")
        model = AVModel.build(
            cfg.model, load_encoders=False,
            llm_path=llm_dir if os.path.isdir(llm_dir) else None,
            adapter_path=adapter if os.path.isdir(adapter) and cfg.model.llm.mode == "lora"
            else None,
            tokenizer_path=os.path.join(path, "tokenizer"))
        model.connector.load_state_dict(load_file(os.path.join(path, CONNECTOR_FILE)))
    return model


class _Reporter:
    """MLflow every step on rank 0; Ray Train's report only with a checkpoint.

    Why not every step: ``ray.train.report`` synchronises with the controller (measured
    ~1.4 s per call on the 2-core CI machine, 3x the step itself); Ray only needs metrics
    to rank checkpoints and for the final result.
    """

    def __init__(self, cfg: TrainConfig, tracker, rank: int):
        self.cfg, self.tracker, self.rank = cfg, tracker, rank

    def __call__(self, metrics: dict[str, Any], path: str | None) -> None:
        import ray.train

        step = int(metrics["step"])
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if self.tracker is not None:
            self.tracker.log_metrics(scalars, step)
            self.tracker.log_answers(metrics.get("answers") or [], step)
            if path and step == self.cfg.optim.max_steps:
                uri = self.tracker.finish(os.path.join(path, "model"),
                                          self.cfg.tracking.register_as)
                log.info("final checkpoint logged%s", f" and registered as {uri}" if uri else "")
        if path:
            ray.train.report(scalars, checkpoint=ray.train.Checkpoint.from_directory(path))
            shutil.rmtree(path, ignore_errors=True)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Thin: rebuild config, build model, take the shard, run the loop, report."""
    import ray.train
    import torch

    from pipelines.train_data import Collator
    from pipelines.train_loop import LoopState, Trainer

    cfg = from_dict(TrainConfig, config["cfg"])
    torch.set_num_threads(cfg.scaling.torch_threads)
    if not cfg.scaling.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(cfg.optim.seed)
    model = build_model(cfg)
    if cfg.scaling.use_gpu:
        model.to(f"cuda:{ray.train.get_context().get_local_rank()}")
    state, tracker = LoopState(), None
    reporter = _Reporter(cfg, None, rank)
    trainer = Trainer(model, cfg, reporter)
    resume = ray.train.get_checkpoint()
    if resume:
        with resume.as_directory() as path:
            state = trainer.resume(path)
    if rank == 0:
        tracker = _tracker(cfg)
        reporter.tracker = tracker
        if resume:
            # In the run's metrics: Ray Train restarted it (a worker failure) from this step.
            tracker.log_metrics({"resumed_from_step": state.step}, state.step)
    collator = Collator(model, cfg.data, seed=cfg.optim.seed + rank)
    train = ray.train.get_dataset_shard("train")
    val = ray.train.get_dataset_shard("val") if "val" in config["datasets"] else None

    def epochs(epoch: int, skip: int):
        collator.set_epoch(epoch)
        seed = None if cfg.data.shuffle_seed is None else cfg.data.shuffle_seed + epoch
        it = train.iter_torch_batches(batch_size=cfg.data.batch_size, collate_fn=collator,
                                      local_shuffle_buffer_size=None if seed is None else
                                      4 * cfg.data.batch_size, local_shuffle_seed=seed)
        for i, batch in enumerate(it):
            if i >= skip:
                yield batch

    # Validation's own collator stays at epoch 0: every validation draws the same modality
    # drops and questions, so val_loss compares checkpoints, not draws.
    val_collator = Collator(model, cfg.data, seed=cfg.optim.seed + rank)

    def val_batches():
        return val.iter_torch_batches(batch_size=cfg.data.batch_size, collate_fn=val_collator)

    def checkpoint_dir(step: int) -> str:
        return tempfile.mkdtemp(prefix=f"avray-ckpt-{step}-")

    trainer.fit(epochs, val_batches if val is not None else None, state, checkpoint_dir)


def _tracker(cfg: TrainConfig):
    """Rank 0's MLflow run. Its id lives beside Ray Train's run directory, so a restarted
    worker group (or a rerun of the same name and storage, which Ray Train resumes) keeps
    logging into the same MLflow run."""
    from pipelines.tracking import Tracker

    id_file = storage.join(_storage(cfg), cfg.name, "avray_mlflow_run_id")
    run_id = None
    if storage.exists(id_file):
        with storage.open_input(id_file) as f:
            run_id = f.read().decode().strip() or None
    tracker = Tracker(cfg.tracking.uri, _storage(cfg), cfg.tracking.experiment or cfg.name,
                      run_id=run_id, run_name=cfg.name)
    if run_id is None:
        storage.write_bytes_atomic(id_file, tracker.run_id.encode())
    tracker.log_params(to_dict(cfg))
    return tracker


def _storage(cfg: TrainConfig) -> str:
    path = cfg.run.storage_path
    return path if storage.is_s3(path) else os.path.abspath(storage.local_path(path))


def _ray_storage(cfg: TrainConfig) -> dict[str, Any]:
    """Ray Train's storage: our filesystem for s3:// (AWS_ENDPOINT_URL honoured, as in every
    other job), a plain path otherwise."""
    path = _storage(cfg)
    if not storage.is_s3(path):
        return {"storage_path": path}
    fs, inside = storage.filesystem(path)
    return {"storage_path": inside, "storage_filesystem": fs}


def datasets(cfg: TrainConfig, columns: list[str]) -> dict[str, Any]:
    import ray.data
    from ray.data.expressions import col

    # select_columns and predicate expressions are pushed down into the parquet reader (the
    # columns= argument and string expressions are deprecated; a string also broke on quotes).
    ds = ray.data.read_parquet(storage.join(cfg.data.features, "features")).select_columns(columns)
    out = {"train": ds.filter(expr=col("split") == cfg.data.train_split)}
    if cfg.data.val_split:
        out["val"] = ds.filter(expr=col("split") == cfg.data.val_split)
    if cfg.data.materialize:
        out = {k: v.materialize() for k, v in out.items()}
    return out


def fit(cfg: TrainConfig, columns: list[str]):
    """Build and run the TorchTrainer; returns Ray Train's Result."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    data = datasets(cfg, columns)
    s = cfg.scaling
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "datasets": sorted(data)},
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                     resources_per_worker={"CPU": s.cpus_per_worker}),
        run_config=RunConfig(
            name=cfg.name, **_ray_storage(cfg),
            failure_config=FailureConfig(max_failures=cfg.run.max_failures,
                                         controller_failure_limit=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_best,
                                               checkpoint_score_attribute=(
                                                   "val_loss" if "val" in data else "loss"),
                                               checkpoint_score_order="min")),
        datasets=data)
    with jobs.sigint_restored():
        return trainer.fit()


def main(argv: list[str] | None = None):
    jobs.setup_logging()
    args = jobs.job_arguments(argv, __doc__)
    try:
        cfg, columns = preflight(load_train_config(args.config, args.overrides))
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    with jobs.ray_session(cfg.ray):
        result = fit(cfg, columns)
    log.info("training finished: %s", result.metrics)
    return result


if __name__ == "__main__":
    main()
