"""Checkpoint locations: a local directory, an ``s3://`` prefix, or an MLflow ``models:/`` URI.

Why here: training (``init_from``), serving and evaluation all accept the same three kinds
of location and need a local directory to rebuild a model from (``av_model.checkpoint``).
What needs only the model config (serving's decoders and encoders: the encoders' weights
are named by the config, not kept in the checkpoint) fetches ``avray.yaml`` alone.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tempfile
from pathlib import Path
from typing import Iterator

import pyarrow.fs as pafs

from pipelines import storage


@contextlib.contextmanager
def local_checkpoint(uri: str, tracking_uri: str | None = None) -> Iterator[str]:
    """Yield a local directory holding the checkpoint at ``uri`` (downloaded if remote);
    ``tracking_uri`` names the MLflow server for ``models:/`` URIs (default: the env's)."""
    uri = str(uri)
    if _is_mlflow(uri):
        from pipelines import tracking

        with tempfile.TemporaryDirectory(prefix="avray-ckpt-") as tmp:
            yield tracking.download_checkpoint(uri, tmp, tracking_uri)
        return
    if not storage.is_s3(uri):
        path = storage.local_path(uri)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no checkpoint directory at {uri}")
        yield path
        return
    fs, path = storage.filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no checkpoint at {uri}")
    with tempfile.TemporaryDirectory(prefix="avray-ckpt-") as tmp:
        pafs.copy_files(path, tmp, source_filesystem=fs,
                        destination_filesystem=pafs.LocalFileSystem())
        yield tmp


def _is_mlflow(uri: str) -> bool:
    return uri.startswith(("models:/", "runs:/"))


@contextlib.contextmanager
def local_config(uri: str, tracking_uri: str | None = None) -> Iterator[str]:
    """Yield a local directory holding the checkpoint's ``avray.yaml``: the checkpoint itself
    when local, else a temp directory with that one file fetched.

    Why not ``local_checkpoint``: every autoscaled decoder and encoder replica reads the
    config, and a full copy of an s3:// or models:/ checkpoint would download the LLM
    weights each time."""
    from av_model.checkpoint import CONFIG_FILE

    uri = str(uri)
    if not storage.is_s3(uri) and not _is_mlflow(uri):
        with local_checkpoint(uri) as path:
            yield path
        return
    with tempfile.TemporaryDirectory(prefix="avray-config-") as tmp:
        if _is_mlflow(uri):
            yield _mlflow_config(uri, tmp, tracking_uri)
            return
        src = storage.join(uri, CONFIG_FILE)
        if not storage.exists(src):
            raise FileNotFoundError(f"no checkpoint at {uri} (no {CONFIG_FILE})")
        with storage.open_input(src) as f:
            Path(tmp, CONFIG_FILE).write_bytes(f.read())
        yield tmp


def _mlflow_config(uri: str, dst: str, tracking_uri: str | None) -> str:
    """Download only ``avray.yaml`` of a ``models:/`` or ``runs:/`` checkpoint into ``dst``;
    returns the directory it landed in."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

    from av_model.checkpoint import CONFIG_FILE
    from pipelines import tracking

    # The repository of the run or model version, and the path inside it: a runs:/ repo
    # built on a sub-path names the run's logged model's files from the run's root.
    if uri.startswith("runs:/"):
        run_id, start = RunsArtifactRepository.parse_runs_uri(uri)
        root = f"runs:/{run_id}"
    else:
        root, start = ModelsArtifactRepository.split_models_uri(uri)
    # MLflow resolves models:/ against its global registry URI (see tracking).
    with tracking._global_uris(tracking_uri) if tracking_uri else contextlib.nullcontext():
        repo = get_artifact_repository(root)
        found = _find_config(repo, CONFIG_FILE, start or "")
        if found is None:
            raise FileNotFoundError(f"{uri} holds no avray checkpoint (no {CONFIG_FILE})")
        return os.path.dirname(repo.download_artifacts(found, dst))


def _find_config(repo, name: str, path: str = "", depth: int = 2) -> str | None:
    """The artifact path of ``name`` at ``path`` or at most ``depth`` folders below it, by
    listing only (a logged model keeps the checkpoint at ``artifacts/<folder>/``)."""
    entries = repo.list_artifacts(path)
    for e in entries:
        if not e.is_dir and posixpath.basename(e.path) == name:
            return e.path
    for e in entries if depth > 0 else ():
        if e.is_dir and (found := _find_config(repo, name, e.path, depth - 1)):
            return found
    return None


def check_reference(ref: str, field: str = "checkpoint") -> None:
    """Pre-flight: a local checkpoint reference is an avray checkpoint directory (s3:// and
    models:/ are resolved where they are loaded). Raises ConfigError naming ``field``."""
    from av_model.checkpoint import CONFIG_FILE
    from av_model.configlib import check

    if not storage.is_s3(ref) and not _is_mlflow(ref):
        check(os.path.isfile(os.path.join(storage.local_path(ref), CONFIG_FILE)), field,
              f"{ref} is not an avray checkpoint directory (no {CONFIG_FILE})")
