"""Shared fixtures: tiny encoders on disk, a real local Ray, a real S3-compatible server.

Everything runs for real on this machine: Ray on 2 CPUs, moto's S3 server on 127.0.0.1,
mp4 files made by ffmpeg. Session-scoped because each costs seconds to start.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.jobs import free_port

ROOT = Path(__file__).resolve().parents[1]
SHARED_MEDIA = ROOT.parent / "shared" / "media"

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def shared_media() -> Path:
    if not SHARED_MEDIA.is_dir():
        pytest.skip(f"shared media not found at {SHARED_MEDIA}")
    return SHARED_MEDIA


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory) -> dict[str, str]:
    from av_model.tiny import save_tiny_models

    return save_tiny_models(tmp_path_factory.mktemp("tiny"), seed=0)


def _wait_until_up(proc: subprocess.Popen, probe, timeout: float, what: str) -> None:
    """Call ``probe`` until it stops raising OSError; kill ``proc`` and fail after timeout."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            probe()
            return
        except OSError:
            time.sleep(0.3)
    proc.kill()
    pytest.fail(f"{what} did not start")


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on loopback; sets the AWS_* variables boto3 and pyarrow read."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                             "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _wait_until_up(proc, lambda: socket.create_connection(("127.0.0.1", port), 0.5).close(),
                   30, "moto server")
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """One local Ray for the session (2 CPUs), workers see the test env and the checkout.

    Depends on s3_server so workers inherit its AWS_* variables.
    """
    import ray

    from pipelines.jobs import WORKER_ENV

    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    os.environ["PYTHONPATH"] = path
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {**WORKER_ENV, "PYTHONPATH": path}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (sqlite store, served artifacts) on 127.0.0.1."""
    import urllib.request

    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    _wait_until_up(proc, lambda: urllib.request.urlopen(f"{uri}/health", timeout=1).read(),
                   90, "mlflow server")
    yield uri
    proc.terminate()
    proc.wait(timeout=20)
