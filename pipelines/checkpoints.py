"""Checkpoint locations: a local directory, an ``s3://`` prefix, or an MLflow ``models:/`` URI.

Why here: training (``init_from``), serving and evaluation all accept the same three kinds
of location and need a local directory to rebuild a model from (``av_model.checkpoint``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator

import pyarrow.fs as pafs

from pipelines import storage


@contextlib.contextmanager
def local_checkpoint(uri: str, tracking_uri: str | None = None) -> Iterator[str]:
    """Yield a local directory holding the checkpoint at ``uri`` (downloaded if remote);
    ``tracking_uri`` names the MLflow server for ``models:/`` URIs (default: the env's)."""
    uri = str(uri)
    if uri.startswith(("models:/", "runs:/")):
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


def check_reference(ref: str, field: str = "checkpoint") -> None:
    """Pre-flight: a local checkpoint reference is an avray checkpoint directory (s3:// and
    models:/ are resolved where they are loaded). Raises ConfigError naming ``field``."""
    from av_model.checkpoint import CONFIG_FILE
    from av_model.configlib import check

    if not storage.is_s3(ref) and not ref.startswith(("models:/", "runs:/")):
        check(os.path.isfile(os.path.join(storage.local_path(ref), CONFIG_FILE)), field,
              f"{ref} is not an avray checkpoint directory (no {CONFIG_FILE})")
