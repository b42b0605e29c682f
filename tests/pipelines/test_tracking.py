"""The MLflow tracker leaves the process's MLflow settings as it found them: a job run
in-process (the quickstart, notebooks, tests) must not steer the next job's tracking."""

import os

import mlflow
from mlflow.tracking import MlflowClient

from pipelines.tracking import Tracker


def test_tracker_does_not_leak_its_uri_into_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, str(tmp_path), "leak-check", run_name="r")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "avray.yaml").write_text("{}\n")
    assert tracker.finish(str(ckpt), "leak-check-model") == "models:/leak-check-model/1"
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == before
    # Not pinned: the defaults still follow the environment, as before the call.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert mlflow.get_tracking_uri() == mlflow.get_registry_uri() == "sqlite:///elsewhere.db"
    run = MlflowClient(uri).get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
