"""The cluster/mlflow recipe for real: a PostgreSQL server (initdb + pg_ctl into a temporary
directory), the database and user the README creates, the tracking server started by
``cluster/mlflow/start_server.sh`` with its artifacts in S3 (moto's S3 server), and a real
avray training run (Ray Train + DeepSpeed) tracked to it and read back through the server,
from PostgreSQL and from the bucket.

PostgreSQL refuses to run as root: as root the server runs as the ``postgres`` user (the
Debian package creates it). Its directory is a fresh one under the system temp dir, not
pytest's ``tmp_path``: that lies under a root-only ``/tmp/pytest-of-root``, and its long
name would push the unix socket path past its ~100-byte limit. Missing server
binaries fail the test (CI installs them: ``.ci/run``), they do not skip it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from pipelines.jobs import free_port
from tests.conftest import ROOT, _wait_until_up

START_SERVER = ROOT / "cluster" / "mlflow" / "start_server.sh"
TRAIN = str(ROOT / "pipelines" / "configs" / "train" / "tiny-instruct.yaml")
PG_USER = "postgres"  # the OS user the server runs as under root, and the DB superuser


def pg_bindir() -> Path:
    """The directory of initdb / pg_ctl: PATH first, then Debian's /usr/lib/postgresql/*/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),  # newest version last
                    key=lambda p: [int(x) for x in re.findall(r"\d+", p)])
    if debian:
        return Path(debian[-1]).parent
    pytest.fail("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or "
                "under /usr/lib/postgresql/*/bin: install them (Debian/Ubuntu: apt-get install "
                "postgresql; .ci/run does this in CI)", pytrace=False)


def _as_owner(cmd: list[str]) -> list[str]:
    """``cmd`` as the PostgreSQL OS user when we are root (initdb/postgres refuse root)."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", PG_USER, "--", *cmd]
    return ["su", PG_USER, "-s", "/bin/sh", "-c", subprocess.list2cmdline(cmd)]


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(_as_owner(cmd), cwd=cwd, capture_output=True, text=True, timeout=120)
    if done.returncode:
        pytest.fail(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


@contextlib.contextmanager
def _server_dir() -> Iterator[Path]:
    """A short-named directory the PostgreSQL server's user owns (the unix socket path must
    stay under ~100 bytes); removed afterwards."""
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam(PG_USER)
        except KeyError:
            pytest.fail(f"running as root needs a non-root '{PG_USER}' OS user for PostgreSQL "
                        "(apt-get install postgresql creates it)", pytrace=False)
    base = Path(tempfile.mkdtemp(prefix="avray-pg-"))
    if owner is not None:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def postgres() -> Iterator[dict]:
    """A PostgreSQL server on 127.0.0.1 (password auth) and a unix socket (trust, for the
    superuser); stopped and removed on exit, failed or not."""
    bindir = pg_bindir()
    with _server_dir() as base:
        data, sock, port = base / "data", base / "sock", free_port()
        _run([str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "-E", "UTF8",
              "--no-locale", "--auth-local=trust", "--auth-host=scram-sha-256"], base)
        _run(["mkdir", "-p", str(sock)], base)
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -F"
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "postgres.log"),
              "-o", options, "-w", "-t", "60", "start"], base)
        try:
            yield {"port": port, "socket_dir": str(sock), "log": base / "postgres.log"}
        finally:
            stop = [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
            if subprocess.run(_as_owner(stop), cwd=base, capture_output=True).returncode:
                _kill_postmaster(data)


def _kill_postmaster(data: Path) -> None:
    """Last resort: SIGKILL the postmaster this test started (its pid is postmaster.pid's
    first line)."""
    with contextlib.suppress(OSError, ValueError):
        os.kill(int((data / "postmaster.pid").read_text().split()[0]), signal.SIGKILL)


def create_database(pg: dict, name: str, user: str, password: str) -> str:
    """The README's `CREATE ROLE` / `CREATE DATABASE`; returns the database's libpq URI."""
    import psycopg2

    conn = psycopg2.connect(host=pg["socket_dir"], port=pg["port"], user=PG_USER,
                            dbname="postgres")
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE ROLE {user} LOGIN PASSWORD %s", (password,))
            cur.execute(f"CREATE DATABASE {name} OWNER {user}")
    finally:
        conn.close()
    return f"postgresql://{user}:{password}@127.0.0.1:{pg['port']}/{name}"


@contextlib.contextmanager
def tracking_server(backend_uri: str, artifacts: str, s3_endpoint: str,
                    log_path: Path) -> Iterator[str]:
    """``cluster/mlflow/start_server.sh`` on a free port; the whole process group (mlflow
    runs uvicorn as a child) is stopped on exit."""
    port = free_port()
    env = {**os.environ, "MLFLOW_BACKEND_URI": backend_uri, "MLFLOW_ARTIFACTS": artifacts,
           "HOST": "127.0.0.1", "PORT": str(port), "MLFLOW_WORKERS": "1",
           "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
           # the script runs `mlflow`: this interpreter's, not whatever PATH finds first
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    uri = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(START_SERVER)], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def probe() -> None:
        if proc.poll() is not None:
            pytest.fail(f"start_server.sh exited with {proc.returncode}:\n"
                        f"{log_path.read_text()[-4000:]}")
        urllib.request.urlopen(f"{uri}/health", timeout=2).read()

    try:
        # First start against an empty database runs MLflow's schema migrations.
        _wait_until_up(proc, probe, 240, "mlflow server (cluster/mlflow/start_server.sh)")
        yield uri
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _logged_model_files(client, model_id: str, path: str | None = None) -> list[str]:
    """Every file under a logged model, listed through the server."""
    out = []
    for item in client.list_logged_model_artifacts(model_id, path):
        out += _logged_model_files(client, model_id, item.path) if item.is_dir else [item.path]
    return out


def _train(uri: str, features: str, tiny_encoders: dict, tmp_path: Path):
    from pipelines import train

    model_yaml = os.path.join(os.path.dirname(tiny_encoders["llm"]), "model.yaml")
    return train.main([
        "--config", TRAIN, f"data.features={features}", f"model_base={model_yaml}",
        f"run.storage_path={tmp_path / 'runs'}", "ray.progress_bars=false", "name=t-pg",
        "optim.max_steps=4", "run.checkpoint_every=4", "run.val_every=4",
        "run.generate_samples=1", f"tracking.uri={uri}", "tracking.register_as=tiny-av-pg"])


def _read_back(uri: str, tmp_path: Path) -> tuple[str, str]:
    """The run as a user sees it through the server: params, metric history, artifacts,
    the logged and registered model, the checkpoint downloaded and loaded. Returns the run id
    and ``<model id>/artifacts/<checkpoint dir>``, the checkpoint's place in the store."""
    from mlflow.tracking import MlflowClient

    from av_model import checkpoint as av_checkpoint
    from pipelines.tracking import download_checkpoint

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("t-pg")
    (run,) = client.search_runs([exp.experiment_id])
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.params["tracking.uri"] == uri
    assert run.data.params["optim.max_steps"] == "4"
    assert run.data.params["deepspeed.zero_stage"] == "2"
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [4]
    # The run's own artifacts: the generated answers, through the server's proxy.
    assert [a.path for a in client.list_artifacts(run_id, "answers")] == [
        "answers/step_0000004.txt"]
    # The checkpoint: the pyfunc model's artifacts (MLflow 3 keeps a logged model's files
    # under the model, not the run).
    (logged,) = client.search_logged_models([exp.experiment_id])
    assert logged.source_run_id == run_id
    files = _logged_model_files(client, logged.model_id)
    (ckpt,) = [os.path.dirname(f) for f in files if os.path.basename(f) == "avray.yaml"]
    assert f"{ckpt}/connector.safetensors" in files, files
    assert any(f.startswith(f"{ckpt}/tokenizer/") for f in files), files
    (version,) = client.search_model_versions("name='tiny-av-pg'")
    assert version.run_id == run_id
    path = download_checkpoint(f"models:/tiny-av-pg/{version.version}",
                               str(tmp_path / "download"), uri)
    assert av_checkpoint.load(path, load_encoders=False).cfg.llm.mode == "full"
    return run_id, f"{logged.model_id}/artifacts/{ckpt}"


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_training_tracks_to_mlflow_on_postgres_with_s3_artifacts(request, tmp_path):
    import boto3
    import psycopg2

    pg_bindir()  # fail at once, before the session fixtures extract features
    features = request.getfixturevalue("synth_features")["features"]
    tiny_encoders = request.getfixturevalue("tiny_encoders")
    s3_endpoint = request.getfixturevalue("s3_server")
    bucket = f"mlflow-{secrets.token_hex(4)}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    password = secrets.token_urlsafe(12)

    with postgres() as pg:
        db_uri = create_database(pg, "mlflow", "mlflow", password)
        # The driver named, as in the recipe: SQLAlchemy 2.1 maps a bare postgresql:// to
        # psycopg 3, and avray installs psycopg2.
        backend = db_uri.replace("postgresql://", "postgresql+psycopg2://", 1)
        with tracking_server(backend, f"s3://{bucket}/artifacts", s3_endpoint,
                             tmp_path / "mlflow-server.log") as uri:
            result = _train(uri, features, tiny_encoders, tmp_path)
            assert result.metrics["step"] == 4

            run_id, model_dir = _read_back(uri, tmp_path)

        # What the server wrote is where the recipe says: rows in PostgreSQL, files in S3.
        conn = psycopg2.connect(db_uri)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM metrics WHERE run_uuid = %s AND key = 'loss'",
                            (run_id,))
                assert cur.fetchone()[0] == 4
                cur.execute("SELECT name FROM registered_models")
                assert cur.fetchall() == [("tiny-av-pg",)]
        finally:
            conn.close()
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix="artifacts/") for o in page.get("Contents", [])]
    assert any(k.endswith(f"/{model_dir}/avray.yaml") for k in keys), keys
    assert any(k.endswith("/answers/step_0000004.txt") for k in keys), keys
