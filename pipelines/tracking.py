"""MLflow, only here and only on rank 0: experiment per job, params, metrics, the final
checkpoint as a registered model whose ``models:/NAME/VERSION`` URI serving and evaluation
accept (``pipelines.checkpoints.local_checkpoint``).

Tracking URI: the config's, else ``MLFLOW_TRACKING_URI``, else a local sqlite store beside
the run's storage (``<storage>/mlflow.db``, artifacts under ``<storage>/mlartifacts``), so
a laptop run needs no server and a cluster run points at one.

The registered model is a pyfunc whose ``artifacts/`` holds the avray checkpoint
directory (under its own folder name); loading it with ``mlflow.pyfunc.load_model`` gives a text-only predictor, and
``download_checkpoint`` gives the directory ``av_model.checkpoint.load`` rebuilds from.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

import mlflow
from mlflow.tracking import MlflowClient
# MLflow's raw URI globals (None = not set): the public getters only return resolved values.
from mlflow.tracking._model_registry import utils as _registry_globals
from mlflow.tracking._tracking_service import utils as _tracking_globals

log = logging.getLogger("avray.tracking")
CHECKPOINT_ARTIFACT = "checkpoint"


def resolve_uri(uri: str | None, storage_path: str) -> tuple[str, str | None]:
    """(tracking URI, artifact location for a new experiment or None for the server's)."""
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if chosen and chosen.startswith("sqlite:///"):
        # A local store: artifacts beside the database, not in the working directory
        # (MLflow's default for a new experiment, ./mlruns).
        db = Path(chosen[len("sqlite:///"):]).resolve()
        return chosen, (db.parent / "mlartifacts").as_uri()
    if chosen:
        return chosen, None
    root = Path(storage_path).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}", (root / "mlartifacts").as_uri()


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested config dict → {"optim.lr": "0.0001", ...} (MLflow params are strings)."""
    if isinstance(data, dict):
        out: dict[str, str] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): str(data)[:500]}


class Tracker:
    """One MLflow run; ``run_id`` survives worker restarts through the loop state."""

    def __init__(self, uri: str | None, storage_path: str, experiment: str,
                 run_id: str | None = None, run_name: str | None = None,
                 parent_run_id: str | None = None):
        tracking_uri, artifacts = resolve_uri(uri, storage_path)
        # No mlflow.set_tracking_uri here: it also writes MLFLOW_TRACKING_URI into this
        # process's environment, which would steer every later job in the process (and its
        # subprocesses). Only ``finish`` needs the globals, and sets them just around its call.
        self.client = MlflowClient(tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(
            experiment, artifact_location=artifacts)
        if run_id is None:
            tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else None
            run_id = self.client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        self.run_id, self.tracking_uri = run_id, tracking_uri
        log.info("MLflow run %s at %s", run_id, tracking_uri)

    def log_params(self, config: dict[str, Any]) -> None:
        params = flatten(config)
        existing = self.client.get_run(self.run_id).data.params
        new = [mlflow.entities.Param(k, v) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i:i + 100])

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        now = int(time.time() * 1000)
        scalars = [mlflow.entities.Metric(k, float(v), now, step) for k, v in metrics.items()
                   if isinstance(v, (int, float))]
        if scalars:
            self.client.log_batch(self.run_id, metrics=scalars)

    def log_answers(self, answers: list[dict[str, str]], step: int) -> None:
        if answers:
            text = "\n\n".join(f"Q: {a['prompt']}\nreference: {a['reference']}\n"
                               f"generated: {a['generated']}" for a in answers)
            self.client.log_text(self.run_id, text, f"answers/step_{step:07d}.txt")

    def finish(self, checkpoint_dir: str, register_as: str | None) -> str | None:
        """Log the checkpoint as a pyfunc model; register it; return models:/NAME/VERSION."""
        with _global_uris(self.tracking_uri), mlflow.start_run(run_id=self.run_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=AVCheckpointModel(),
                artifacts={CHECKPOINT_ARTIFACT: checkpoint_dir},
                pip_requirements=["avray"], registered_model_name=register_as)
        self.client.set_terminated(self.run_id)
        if not register_as:
            return None
        version = info.registered_model_version
        return f"models:/{register_as}/{version}"


class AVCheckpointModel(mlflow.pyfunc.PythonModel):
    """pyfunc view of a checkpoint: ``predict`` answers text prompts (no media)."""

    def load_context(self, context) -> None:
        from av_model import checkpoint

        self.model = checkpoint.load(context.artifacts[CHECKPOINT_ARTIFACT],
                                     load_encoders=False)

    def predict(self, context, model_input, params=None):
        from av_model.model import Sample

        prompts = list(model_input["prompt"]) if hasattr(model_input, "columns") else \
            list(model_input)
        return self.model.generate([Sample([{"role": "user", "content": str(p)}])
                                    for p in prompts])


_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def _global_uris(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking and registry URIs at ``uri``, then put back exactly
    what was there: the raw globals (None = unset, so MLflow keeps resolving its defaults
    rather than staying pinned to what they resolved to) and the environment
    (``set_tracking_uri`` also writes MLFLOW_TRACKING_URI)."""
    env = {k: os.environ.get(k) for k in _URI_ENV}
    saved = _tracking_globals._tracking_uri, _registry_globals._registry_uri
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])
        mlflow.set_registry_uri(saved[1])
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def download_checkpoint(uri: str, dst: str, tracking_uri: str | None = None) -> str:
    """A ``models:/`` or ``runs:/`` URI → the local avray checkpoint directory inside it.

    The registry is ``tracking_uri``, else MLFLOW_TRACKING_URI (MLflow's own default).
    MLflow 3.17 resolves ``models:/`` against the *global* registry URI whatever is passed,
    so both globals are set for the download and restored after.
    """
    if tracking_uri:
        with _global_uris(tracking_uri):
            root = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst))
    else:
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst))
    for candidate in (root, root / "artifacts" / CHECKPOINT_ARTIFACT,
                      *root.rglob("avray.yaml")):
        path = candidate.parent if candidate.name == "avray.yaml" else candidate
        if (path / "avray.yaml").is_file():
            return str(path)
    raise FileNotFoundError(f"{uri} holds no avray checkpoint (no avray.yaml)")


def latest_model_uri(name: str, tracking_uri: str) -> str:
    """``models:/NAME/VERSION`` of a registered model's newest version (the one a training
    run just registered: rank 0 registers it on a worker, so the driver asks the registry)."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise LookupError(f"no registered model named {name!r} in {tracking_uri}")
    return f"models:/{name}/{max(int(v.version) for v in versions)}"
