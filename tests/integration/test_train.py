"""The training job end to end: real Ray Train + DeepSpeed (gloo, CPU), real parquet shards
from the extract job, a real MLflow server, the registered model loaded back and used."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from av_model import checkpoint as av_checkpoint
from av_model.model import GenerateOptions, Sample
from pipelines import train
from pipelines.checkpoints import local_checkpoint
from pipelines.train_config import load_train_config
from tests.conftest import ROOT

TRAIN = str(ROOT / "pipelines" / "configs" / "train" / "tiny-instruct.yaml")


@pytest.fixture(scope="module")
def features(synth_features) -> str:
    return synth_features["features"]


def _args(features: str, tiny_encoders: dict, tmp_path, *extra: str) -> list[str]:
    model_yaml = os.path.join(os.path.dirname(tiny_encoders["llm"]), "model.yaml")
    return ["--config", TRAIN, f"data.features={features}", f"model_base={model_yaml}",
            f"run.storage_path={tmp_path / 'runs'}", "ray.progress_bars=false", *extra]


@pytest.mark.slow
def test_zero2_two_workers_tracks_registers_and_the_model_loads(
        features, tiny_encoders, tmp_path, mlflow_server):
    sigint = signal.getsignal(signal.SIGINT)
    result = train.main(_args(features, tiny_encoders, tmp_path, "name=t-zero2",
                              "optim.max_steps=12", "run.checkpoint_every=4", "run.val_every=4",
                              "run.keep_best=1", f"tracking.uri={mlflow_server}",
                              "tracking.register_as=tiny-av"))
    assert result.metrics["step"] == 12 and "val_loss" in result.metrics
    # Ray Train's Ctrl-C handler is gone after the run: a driver that goes on (the
    # quickstart's --keep-serving) gets KeyboardInterrupt again.
    assert signal.getsignal(signal.SIGINT) is sigint
    assert result.checkpoint is not None
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("t-zero2")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.params["deepspeed.zero_stage"] == "2"
    assert run.data.params["scaling.num_workers"] == "2"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == list(range(1, 13))
    # run.keep_best=1: the checkpoint with the lowest validation loss stays, and Ray Train
    # never deletes the latest (a restart resumes from it); the others are gone.
    val = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_loss")}
    assert sorted(val) == [4, 8, 12]
    kept = [json.loads((d / "loop.json").read_text())["step"]
            for d in (tmp_path / "runs" / "t-zero2").glob("checkpoint_*") if d.is_dir()]
    assert sorted(kept) == sorted({min(val, key=val.get), 12})
    # A few generated answers per validation, as text beside the metrics.
    answers = client.list_artifacts(run.info.run_id, "answers")
    assert [a.path for a in answers] == [f"answers/step_{s:07d}.txt" for s in (4, 8, 12)]
    text = Path(client.download_artifacts(run.info.run_id, answers[-1].path, str(tmp_path)))
    assert text.read_text().count("generated:") == 2
    for name in ("lr", "grad_norm", "samples_per_s", "tokens_per_s", "data_wait_fraction",
                 "val_loss"):
        assert client.get_metric_history(run.info.run_id, name), name
    losses = [m.value for m in history]
    assert min(losses[-3:]) < losses[0]
    (version,) = client.search_model_versions("name='tiny-av'")
    assert version.run_id == run.info.run_id
    with local_checkpoint(f"models:/tiny-av/{version.version}", mlflow_server) as path:
        model = av_checkpoint.load(path, load_encoders=False)
    assert model.cfg.llm.mode == "full"
    # MLflow 3 keeps the checkpoint as a logged model linked to the run; runs:/ finds it too.
    with local_checkpoint(f"runs:/{run.info.run_id}/model", mlflow_server) as path:
        assert (Path(path) / "avray.yaml").is_file()
    answer = model.generate([Sample([{"role": "user", "content": "Hello?"}])],
                            GenerateOptions(max_new_tokens=3))
    assert isinstance(answer[0], str)


@pytest.mark.slow
def test_zero3_two_workers_loss_decreases(features, tiny_encoders, tmp_path):
    result = train.main(_args(features, tiny_encoders, tmp_path, "name=t-zero3",
                              "deepspeed.zero_stage=3", "optim.max_steps=10",
                              "run.checkpoint_every=10", "run.val_every=0",
                              "run.generate_samples=0"))
    assert result.metrics["step"] == 10
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("t-zero3").experiment_id])
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "loss"),
                                      key=lambda m: m.step)]
    assert min(losses[-3:]) < losses[0]
    with result.checkpoint.as_directory() as path:
        model = av_checkpoint.load(os.path.join(path, "model"), load_encoders=False)
    assert sum(p.numel() for p in model.connector.parameters()) > 0


def test_preflight_pins_the_drivers_tracking_uri(features, tiny_encoders, tmp_path, monkeypatch):
    """Rank 0 logs from a worker whose environment may lack the driver's MLFLOW_TRACKING_URI
    (`ray job submit` sets it for the driver only), so the driver writes it into the config."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    overrides = _args(features, tiny_encoders, tmp_path)[2:]
    cfg, _ = train.preflight(load_train_config(TRAIN, overrides))
    assert cfg.tracking.uri == "http://127.0.0.1:5999"
    pinned, _ = train.preflight(load_train_config(TRAIN, overrides + ["tracking.uri=sqlite:///x.db"]))
    assert pinned.tracking.uri == "sqlite:///x.db"          # an explicit URI wins


@pytest.mark.parametrize("override,field", [("data.val_split=dev", "data.val_split"),
                                            ("data.train_split=tra", "data.train_split"),
                                            ("scaling.num_workers=64", "data.train_split")])
def test_preflight_refuses_a_split_with_no_rows(features, tiny_encoders, tmp_path, override,
                                                field):
    """An empty validation split would log val_loss 0.0 and rank every checkpoint best."""
    from av_model.configlib import ConfigError

    overrides = _args(features, tiny_encoders, tmp_path)[2:] + [override]
    with pytest.raises(ConfigError) as err:
        train.preflight(load_train_config(TRAIN, overrides))
    assert err.value.field == field and "'train'" in str(err.value)
    cfg, _ = train.preflight(load_train_config(TRAIN, overrides[:-1] + ["data.val_split="]))
    assert cfg.data.val_split == ""                         # no validation: allowed


def test_bad_train_config_exits_2_before_ray(tmp_path, tiny_encoders, capsys):
    with pytest.raises(SystemExit) as err:
        train.main(_args(str(tmp_path / "nothing"), tiny_encoders, tmp_path))
    assert err.value.code == 2
    assert "data.features" in capsys.readouterr().err


@pytest.mark.slow
def test_killed_worker_restarts_and_the_run_ends_at_the_exact_step(
        features, tiny_encoders, tmp_path):
    """SIGKILL a Ray Train worker once Ray Train has registered the first checkpoint: Ray
    Train restarts the group (FailureConfig.max_failures), the loop resumes from that
    checkpoint, and the run still ends at optim.max_steps.

    Why wait for the registration, not the checkpoint's files: Ray Train takes a report when
    its controller next polls the workers; a worker killed in between loses that report, and
    the restarted group starts from the checkpoint before it (here: from scratch)."""
    import json
    import threading
    import time

    import psutil
    from mlflow.tracking import MlflowClient

    runs = tmp_path / "runs"
    box: dict = {}

    def run() -> None:
        box["result"] = train.main(_args(
            features, tiny_encoders, tmp_path, "name=t-kill", "optim.max_steps=30",
            "run.checkpoint_every=10", "run.val_every=0", "run.generate_samples=0",
            "run.max_failures=2"))

    def registered() -> list:
        try:
            with open(runs / "t-kill" / "checkpoint_manager_snapshot.json") as f:
                return json.load(f)["checkpoint_results"]
        except (OSError, ValueError, KeyError):
            return []

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 600
    while not registered() and time.time() < deadline:
        time.sleep(0.2)
    workers = [p for p in psutil.process_iter(["cmdline"])
               if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])]
    assert workers, "no Ray Train worker process found"
    os.kill(workers[-1].pid, signal.SIGKILL)
    thread.join(timeout=900)
    result = box["result"]
    assert result.metrics["step"] == 30
    with result.checkpoint.as_directory() as path:
        assert json.load(open(os.path.join(path, "loop.json")))["step"] == 30
    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("t-kill").experiment_id])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert set(steps) == set(range(1, 31))
    # It restarted once, from a registered checkpoint, not from scratch; the steps between
    # that checkpoint and the kill ran (and were logged) twice.
    resumed = client.get_metric_history(run.info.run_id, "resumed_from_step")
    assert [m.value for m in resumed] in ([10.0], [20.0])
    assert steps.count(1) == 1                      # not restarted from scratch


@pytest.mark.slow
def test_tiny_model_learns_the_synthetic_clips(trained_tiny):
    """Trained on the real synthetic features (first QA of each clip), the tiny model's greedy
    answers on those clips are right (where a question repeats across clips with different
    answers, only the media tells them apart)."""
    import numpy as np
    import torch

    model = av_checkpoint.load(trained_tiny["checkpoint"], load_encoders=False)
    rows = trained_tiny["rows"]

    def feats(x):
        return torch.from_numpy(np.asarray(x, np.float32)) if len(x) else None

    prompts = [Sample(r["conversations"][:1], feats(r["video"]), feats(r["audio"]))
               for r in rows]
    answers = model.generate(prompts, GenerateOptions(max_new_tokens=8))
    assert answers == [r["conversations"][1]["content"] for r in rows]


@pytest.mark.slow
def test_s3_storage_for_checkpoints(features, tiny_encoders, tmp_path, s3_server, mlflow_server,
                                    monkeypatch):
    """run.storage_path on an S3-compatible server: checkpoints land there and a stage can
    start from one (init_from=s3://...)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="train-runs")
    args = [a for a in _args(features, tiny_encoders, tmp_path) if not a.startswith("run.")]
    result = train.main(args + ["name=t-s3", "run.storage_path=s3://train-runs/runs",
                                "optim.max_steps=2", "optim.warmup_steps=1",
                                "run.checkpoint_every=2",
                                "run.val_every=0", "run.generate_samples=0",
                                f"tracking.uri={mlflow_server}"])
    assert result.metrics["step"] == 2
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="train-runs")["Contents"]]
    ckpt = next(k for k in keys if k.endswith("model/avray.yaml")).rsplit("/", 1)[0]
    with local_checkpoint(f"s3://train-runs/{ckpt}") as path:
        assert os.path.isfile(os.path.join(path, "connector.safetensors"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SystemExit) as err:   # s3 storage without an MLflow server
        train.main(args + ["run.storage_path=s3://train-runs/runs2"])
    assert err.value.code == 2
