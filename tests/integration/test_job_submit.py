"""`ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml` end to end.

A real head node (`ray start --head --block` on 127.0.0.1, with its own ports and temp dir)
runs the extract job on a small synthetic corpus and then the training job on its features,
each submitted from the checkout the way a user submits it to a cluster.

The cluster is this test's alone: the test process never gets RAY_ADDRESS, the cluster's
`ray_current_cluster` file lands in its own temp dir (not /tmp/ray, where a plain
`ray.init()` such as the session's `ray_local` would find it), and teardown ends only the
processes this cluster started. Never `ray stop`: it stops every Ray on the machine.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from pipelines import shards
from pipelines.corpora import synthetic
from pipelines.corpora.base import manifest_row, write_manifest
from pipelines.jobs import WORKER_ENV, free_port
from tests.conftest import ROOT, _wait_until_up

log = logging.getLogger(__name__)
RUNTIME_ENV = ROOT / "cluster" / "runtime_env.yaml"
RAY = str(Path(sys.executable).with_name("ray"))
# `ray start` options that take a port: all chosen here, so that nothing collides with
# another Ray on this machine (the defaults 6379, 8265, 10001, 52365 are shared by all).
PORT_OPTIONS = ("--port", "--dashboard-port", "--ray-client-server-port",
                "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                "--runtime-env-agent-port", "--metrics-export-port", "--node-manager-port",
                "--object-manager-port")


def _runtime_env() -> dict:
    with open(RUNTIME_ENV) as f:
        return yaml.safe_load(f)


def _package(root: Path, out: Path) -> list[str]:
    """The zip Ray uploads for ``--working-dir root`` with our excludes only (no .gitignore,
    no Ray default excludes): its entry names."""
    from ray._private.runtime_env.packaging import create_package

    create_package(str(root), out, include_gitignore=False, excludes=_runtime_env()["excludes"])
    with zipfile.ZipFile(out) as zf:
        return zf.namelist()


def test_runtime_env_sets_the_worker_env():
    """What `jobs.ray_session` gives a local Ray, the file gives a submitted job (the session
    adds nothing under `ray job submit`). Ray's own checks: tests/test_cluster_configs.py."""
    cfg = _runtime_env()
    assert "working_dir" not in cfg  # it comes from --working-dir
    assert {k: cfg["env_vars"].get(k) for k in WORKER_ENV} == WORKER_ENV


def test_runtime_env_excludes_leave_only_code(tmp_path):
    tree = tmp_path / "checkout"
    keep = ["pipelines/jobs.py", "pipelines/configs/extract/tiny.yaml", "av_model/model.py",
            "cluster/runtime_env.yaml", "notebooks/01_quickstart.ipynb", "benchmarks/RESULTS.md",
            "benchmarks/bench_model.png", "README.md", "tests/conftest.py"]
    drop = [".git/HEAD", ".venv/bin/python", "data/synth/media/a.mp4", ".cache/tiny/x.bin",
            "runs/tiny/checkpoint_000000/model/llm.bin", "mlflow.db", "mlruns/0/meta.yaml",
            "mlartifacts/1/a.bin", "avray.egg-info/PKG-INFO", "pipelines/__pycache__/jobs.pyc",
            "notebooks/.ipynb_checkpoints/01-checkpoint.ipynb", "notebooks/outputs/plot.png",
            "benchmarks/extract.json", ".pytest_cache/v/x", "build/lib/x.py"]
    for rel in keep + drop:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(b"x")
    assert sorted(_package(tree, tmp_path / "synthetic.zip")) == sorted(keep)

    # This checkout as `ray job submit --working-dir .` would send it, minus .gitignore help.
    names = _package(ROOT, tmp_path / "checkout.zip")
    assert "pipelines/jobs.py" in names and "cluster/runtime_env.yaml" in names
    top = {n.split("/")[0] for n in names}
    assert not top & {".git", ".venv", "data", ".cache", "runs", "mlruns", "avray.egg-info"}
    assert (tmp_path / "checkout.zip").stat().st_size < 32 * 2**20


def _cluster_env() -> dict[str, str]:
    """The head node's environment (its job drivers and workers inherit it).

    No RAY_ADDRESS (ours or `ray_local`'s) and no PYTHONPATH to the checkout: the jobs must
    find `pipelines` in the uploaded working dir. No WORKER_ENV either: the runtime env must
    supply it. `python` is this venv's, as on a cluster whose image has avray installed.
    """
    drop = {"RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "PYTHONPATH", "MLFLOW_TRACKING_URI",
            "MLFLOW_REGISTRY_URI", *WORKER_ENV}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # A throwaway loopback cluster: no token auth (Ray turns it on when ~/.ray/auth_token
    # exists, and then every client needs the token).
    env["RAY_AUTH_MODE"] = "disabled"
    # Ray replaces 127.0.0.1 by the host's routable address unless this is off (the flag
    # meant for Windows/macOS single-node Ray): then every Ray address and socket is loopback.
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # SIGTERM stops the node at once (default: up to 30 s of draining for Serve replicas).
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    return env


def _ours(pid: int, session: int, temp_dir: str) -> bool:
    """A process of this cluster: in the `ray start` session (GCS, raylet, dashboard,
    workers) or running in its temp dir (job drivers, which Ray starts in new sessions).
    Zombies are dead already: their parent, not this test, reaps them."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        if os.getsid(pid) == session:
            return True
        if os.readlink(f"/proc/{pid}/cwd").startswith(temp_dir + os.sep):
            return True
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return (temp_dir + os.sep).encode() in f.read()
    except OSError:
        return False


def _stop_cluster(proc: subprocess.Popen, temp_dir: str) -> None:
    """SIGTERM `ray start --block` (it stops what it started), then SIGKILL any leftover."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline:
        left = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()
                and _ours(int(p), proc.pid, temp_dir)]
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.5)
    pytest.fail(f"processes of the test cluster survived: {left}")


@pytest.fixture
def head_node(tmp_path):
    """`ray start --head` on 127.0.0.1 with 2 CPUs and the dashboard (the job server)."""
    from ray._common.utils import get_ray_address_file

    # Not under tmp_path: Ray's unix sockets live in <temp>/session_<date>_<pid>/sockets/,
    # and a pytest tmp_path there exceeds the 107-byte socket path limit.
    temp_dir = tempfile.mkdtemp(prefix="avray-ray-")
    ports = set()
    while len(ports) < len(PORT_OPTIONS):
        ports.add(free_port())
    opts = dict(zip(PORT_OPTIONS, map(str, ports)))
    start_log = tmp_path / "ray-start.log"
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--dashboard-host", "127.0.0.1", "--include-dashboard", "true", "--num-cpus", "2",
           "--object-store-memory", str(2**30), "--temp-dir", temp_dir,
           "--min-worker-port", "0", "--max-worker-port", "0",  # any free port
           "--disable-usage-stats", *[x for kv in opts.items() for x in kv]]
    with open(start_log, "w") as out:
        proc = subprocess.Popen(cmd, env=_cluster_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{opts['--dashboard-port']}"

    def probe():
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited {proc.returncode}:\n"
                               f"{start_log.read_text()[-4000:]}")
        urllib.request.urlopen(f"{url}/api/jobs/", timeout=5).read()  # the job server is up
        Path(temp_dir, "ray_current_cluster").read_text()  # written last by `ray start`

    try:
        _wait_until_up(proc, probe, 180, "ray start --head")
        gcs = f"127.0.0.1:{opts['--port']}"
        assert Path(temp_dir, "ray_current_cluster").read_text() == gcs
        default = Path(get_ray_address_file(None))  # what a plain `ray.init()` would join
        assert not default.exists() or default.read_text() != gcs
        yield {"url": url, "temp_dir": temp_dir, "gcs": gcs, "log_dir": tmp_path}
    finally:
        _stop_cluster(proc, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _submit(head: dict, *entrypoint: str, timeout: int = 900, runtime_env: bool = True) -> str:
    """`ray job submit` from the checkout; it waits for the job and streams its logs.
    Returns them; fails with their tail unless the job succeeded (exit code 0)."""
    env_args = ["--runtime-env", str(RUNTIME_ENV.relative_to(ROOT))] if runtime_env else []
    cmd = [RAY, "job", "submit", "--address", head["url"], "--working-dir", ".", *env_args,
           "--", *entrypoint]
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=_cluster_env(), capture_output=True, text=True,
                         timeout=timeout)
    what = " ".join(entrypoint[:3]) if entrypoint[1] == "-m" else "probe"
    log.info("%s: exit %d in %.0f s", what, res.returncode, time.perf_counter() - start)
    logs = res.stdout + res.stderr
    (head["log_dir"] / f"job-{what.split()[-1]}.log").write_text(logs)
    assert res.returncode == 0, f"{what} failed:\n{logs[-6000:]}"
    assert "succeeded" in logs
    return logs


PROBE = """\
import json, os, pipelines, ray
from pipelines.jobs import WORKER_ENV
ray.init()
@ray.remote
def worker():
    import pipelines
    return pipelines.__file__, {k: os.environ.get(k) for k in WORKER_ENV}
print("PROBE", json.dumps({
    "driver": (pipelines.__file__, {k: os.environ.get(k) for k in WORKER_ENV}),
    "worker": ray.get(worker.remote()), "cwd": os.getcwd(),
    "address": os.environ.get("RAY_ADDRESS")}))
"""


def _probe(head: dict) -> None:
    """Driver and workers import `pipelines` from the uploaded copy, which holds code and
    configs only, and see the runtime env's variables."""
    logs = _submit(head, "python", "-c", PROBE)
    seen = json.loads(re.search(r"^PROBE (\{.*\})$", logs, re.M).group(1))
    upload = Path(seen["cwd"])
    assert upload.is_relative_to(Path(head["temp_dir"])) and upload.name.startswith("_ray_pkg_")
    for where in ("driver", "worker"):
        path, env = seen[where]
        assert path == str(upload / "pipelines" / "__init__.py"), (where, path)
        assert env == WORKER_ENV, (where, env)
    assert seen["address"] == head["gcs"]
    assert (upload / "pipelines" / "configs" / "train" / "tiny-instruct.yaml").is_file()
    assert not {".git", ".venv", "data", ".cache"} & {p.name for p in upload.iterdir()}
    size = sum(p.stat().st_size for p in upload.rglob("*") if p.is_file())
    assert size < 32 * 2**20, f"uploaded working dir is {size / 2**20:.1f} MiB"


def _corpus(root: Path) -> tuple[str, list[dict]]:
    """6 clips of 5.5-6 s (4 train, 2 val) and a row whose file does not exist."""
    cfg = synthetic.SynthConfig(n=6, seed=4, min_duration_s=5.5, max_duration_s=6.0,
                                max_shapes=2, speech=False,
                                split_fractions={"train": 0.75, "val": 0.25})
    rows = synthetic.generate(cfg, str(root / "synth"))
    assert sorted(r["split"] for r in rows) == ["train"] * 4 + ["val"] * 2
    missing = manifest_row("missing", str(root / "synth" / "media" / "gone.mp4"), "train")
    return write_manifest([*rows, missing], str(root / "manifest.jsonl")), rows


def _check_features(out: Path, rows: list[dict], encoders: dict) -> None:
    feats = pq.read_table(out / shards.FEATURES_DIR).to_pylist()
    assert sorted(r["clip_id"] for r in feats) == sorted(r["clip_id"] for r in rows)
    by_id = {r["clip_id"]: r for r in rows}
    for row in feats:
        video, audio, d = np.asarray(row["video"]), np.asarray(row["audio"]), row["duration_s"]
        assert video.shape == (math.ceil(d * 2 - 1e-6), 17, 32), row["clip_id"]
        assert audio.shape == (math.ceil(d * 50 - 1e-6), 32), row["clip_id"]
        src = by_id[row["clip_id"]]
        assert (row["split"], row["conversations"]) == (src["split"], src["conversations"])
    errors = shards.read_errors(str(out)).to_pylist()
    assert [(e["clip_id"], e["error"]) for e in errors] == [("missing", "missing_file")]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["clips_ok"], summary["clips_failed"]) == (len(rows), 1)
    meta = shards.read_feature_metadata(str(out))
    assert meta["encoders"]["visual"]["name_or_path"] == encoders["visual"]


def _check_training(runs: Path, name: str, steps: int) -> None:
    from mlflow.tracking import MlflowClient

    from av_model import checkpoint as av_checkpoint

    ckpts = sorted(p for p in (runs / name).glob("checkpoint_*") if p.is_dir())
    assert ckpts, f"no checkpoint under {runs / name}"
    model_dir = ckpts[-1] / "model"
    assert (model_dir / "avray.yaml").is_file() and (model_dir / "connector.safetensors").is_file()
    model = av_checkpoint.load(model_dir, load_encoders=False)
    assert model.cfg.llm.mode == "full"
    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(
        range(1, steps + 1))
    assert client.get_metric_history(run.info.run_id, "val_loss")
    assert run.data.params["scaling.num_workers"] == "2"


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_submit_extract_then_train(head_node, tiny_encoders, tmp_path):
    _probe(head_node)

    manifest, rows = _corpus(tmp_path)
    features = tmp_path / "features"
    logs = _submit(head_node, "python", "-m", "pipelines.extract_features",
                   "--config", "pipelines/configs/extract/tiny.yaml", f"corpus.path={manifest}",
                   f"output={features}",
                   f"encoders.visual.name_or_path={tiny_encoders['visual']}",
                   f"encoders.audio.name_or_path={tiny_encoders['audio']}",
                   "ray.progress_bars=false")
    assert "summary:" in logs
    _check_features(features, rows, tiny_encoders)

    runs, steps = tmp_path / "runs", 4
    model_yaml = Path(tiny_encoders["llm"]).parent / "model.yaml"
    logs = _submit(head_node, "python", "-m", "pipelines.train",
                   "--config", "pipelines/configs/train/tiny-instruct.yaml", "name=submitted",
                   f"data.features={features}", f"model_base={model_yaml}",
                   f"run.storage_path={runs}", f"optim.max_steps={steps}",
                   f"run.checkpoint_every={steps}", f"run.val_every={steps}",
                   "run.generate_samples=0", "ray.progress_bars=false")
    assert "training finished" in logs
    _check_training(runs, "submitted", steps)


_WHICH_RAY = """
import json, ray
from pipelines.jobs import RayConfig, ray_session
out = {}
for name, cfg in {"auto": RayConfig(address="auto"), "unset": RayConfig(num_cpus=1)}.items():
    with ray_session(cfg):
        out[name] = ray.get_runtime_context().gcs_address
print(json.dumps(out))
"""

_SESSION_PROBE = """
import json, os, ray
from pipelines.jobs import WORKER_ENV, RayConfig, ray_session
with ray_session(RayConfig()):
    worker = ray.remote(lambda: {k: os.environ.get(k) for k in WORKER_ENV})
    print("PROBE", json.dumps(ray.get(worker.remote())))
"""


@pytest.mark.slow
def test_ray_session_joins_a_running_cluster_only_when_told(head_node):
    """A `ray start` cluster that a plain ``ray.init()`` would join (its address file is the
    default one here): ``ray.address=auto`` joins it, no address starts a private Ray.
    Submitted without ``--runtime-env``, a job's workers still get the thread caps."""
    tmp = tempfile.mkdtemp(prefix="avray-t-")  # short: Ray's socket paths live under it
    try:
        Path(tmp, "ray").mkdir()
        Path(tmp, "ray", "ray_current_cluster").write_text(head_node["gcs"])
        env = {**_cluster_env(), "RAY_TMPDIR": tmp, "PYTHONPATH": str(ROOT)}
        res = subprocess.run([sys.executable, "-c", _WHICH_RAY], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-4000:]
        seen = json.loads(res.stdout.strip().splitlines()[-1])
        assert seen["auto"] == head_node["gcs"]
        assert seen["unset"] and seen["unset"] != head_node["gcs"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logs = _submit(head_node, "python", "-c", _SESSION_PROBE, runtime_env=False)
    assert json.loads(re.search(r"^PROBE (\{.*\})$", logs, re.M).group(1)) == WORKER_ENV
