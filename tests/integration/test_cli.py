"""The `avray` console script and the quickstart, as a user runs them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests
from mlflow.tracking import MlflowClient

from pipelines import quickstart, shards
from pipelines.corpora.base import read_manifest
from pipelines.jobs import free_port
from tests.conftest import ROOT

AVRAY = str(Path(sys.executable).with_name("avray"))


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([AVRAY, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_avray_help_and_unknown_command():
    ok = _run("--help")
    assert ok.returncode == 0 and "avray synth" in ok.stdout
    bad = _run("fly")
    assert bad.returncode == 2 and "avray extract" in bad.stdout


def test_avray_synth_and_tiny(tmp_path):
    res = _run("synth", "--out", str(tmp_path / "s"), "--n", "2", "--seed", "5",
               "min_duration_s=6", "max_duration_s=6", "max_shapes=2")
    assert res.returncode == 0, res.stderr
    rows = read_manifest(str(tmp_path / "s" / "manifest.jsonl"))
    assert [r["clip_id"] for r in rows] == ["synth_00000", "synth_00001"]
    assert all(os.path.getsize(r["uri"]) > 1000 for r in rows)
    res = _run("tiny", "--out", str(tmp_path / "tiny"))
    assert res.returncode == 0, res.stderr
    for part in ("visual", "audio", "audio_events"):
        assert (tmp_path / "tiny" / part / "config.json").is_file()


def test_avray_manifest_from_webvid(tmp_path, shared_media):
    out = tmp_path / "webvid.parquet"
    res = _run("manifest", "--corpus", "webvid", "--metadata",
               str(shared_media / "webvid_sample.csv"), "--media-root", str(tmp_path / "none"),
               "--out", str(out), "--no-check-files")
    assert res.returncode == 0, res.stderr
    assert len(read_manifest(str(out))) == 20
    assert pq.read_table(tmp_path / "webvid.errors.parquet").num_rows == 0
    checked = _run("manifest", "--corpus", "webvid", "--metadata",
                   str(shared_media / "webvid_sample.csv"), "--media-root",
                   str(tmp_path / "none"), "--out", str(tmp_path / "w2.jsonl"))
    assert checked.returncode == 0 and read_manifest(str(tmp_path / "w2.jsonl")) == []
    assert pq.read_table(tmp_path / "w2.errors.parquet").num_rows == 20


def _quickstart_until_serving(work: Path, port: int, log_path: Path) -> subprocess.Popen:
    """`python -m pipelines.quickstart --keep-serving` in its own session (as in a terminal,
    Ctrl-C reaches the whole process group); returns once it says it serves until Ctrl-C."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with open(log_path, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.quickstart", "--workdir", str(work), "--n", "4",
             "--align-steps", "3", "--steps", "4", "--keep-serving", "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 1500
    while "until Ctrl-C (summary:" not in log_path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop_group(proc)
            pytest.fail(f"quickstart exited {proc.returncode} before serving:\n"
                        f"{log_path.read_text()[-6000:]}")
        time.sleep(2)
    return proc


def _stop_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _printed_curl(howto: str) -> str:
    """The curl command the how-to prints (a line and its backslash continuation)."""
    lines = howto.splitlines()
    i = next(i for i, line in enumerate(lines) if line.strip().startswith("curl "))
    return lines[i].rstrip(" \\") + " " + lines[i + 1].strip()


@pytest.mark.slow
def test_quickstart_end_to_end_keeps_serving_until_ctrl_c(tmp_path):
    """The whole demo as a user runs it, with --keep-serving: the printed curl command gets
    an answer from the live endpoint, and Ctrl-C stops it and leaves no process behind."""
    work, port = tmp_path / "qs", free_port()
    log_path = tmp_path / "quickstart.log"
    proc = _quickstart_until_serving(work, port, log_path)
    try:
        summary = json.loads((work / "quickstart.json").read_text())
        howto = summary["howto"]
        assert summary["url"] == f"http://127.0.0.1:{port}/v1"
        assert "The endpoint stays up until Ctrl-C." in howto
        called = subprocess.run(["bash", "-c", _printed_curl(howto)], capture_output=True,
                                text=True, timeout=300)
        assert called.returncode == 0, called.stderr
        reply = json.loads(called.stdout)
        assert reply["model"] == "avray-quickstart"
        assert isinstance(reply["choices"][0]["message"]["content"], str)
        # Ctrl-C in the terminal: SIGINT to the quickstart's whole process group.
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=180) == 0, log_path.read_text()[-6000:]
    finally:
        if proc.poll() is None:
            _stop_group(proc)
    text = log_path.read_text()
    assert "stopping the endpoint" in text and "nothing left running" in text
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    deadline = time.monotonic() + 60   # Ray's own processes (raylet, GCS, workers) end too
    while _group_alive(proc.pid):
        assert time.monotonic() < deadline, "processes of the quickstart's Ray survived Ctrl-C"
        time.sleep(1)

    assert summary["clips_ok"] == 4 and summary["clips_failed"] == 0
    assert summary["align"]["step"] == 3 and summary["train"]["step"] == 4
    saved = json.loads((work / "features" / "summary.json").read_text())
    assert saved["clips_ok"] == 4
    assert len(shards.written_clip_ids(str(work / "features"))) == 4
    # Stage 2 started from stage 1 with LoRA and was registered; evaluation and serving
    # both loaded the registered model from the quickstart's one MLflow store.
    uri = f"sqlite:///{work / 'runs' / 'mlflow.db'}"
    assert summary["model_uri"] == "models:/avray-quickstart/1"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs = {r.data.tags["mlflow.runName"]: r for e in client.search_experiments()
            for r in client.search_runs([e.experiment_id])}
    assert {"tiny-align", "tiny-instruct", "avray-eval-synthetic"} <= set(runs), sorted(runs)
    instruct = runs["tiny-instruct"]
    assert instruct.data.params["model.llm.mode"] == "lora"
    assert "checkpoint_" in instruct.data.params["init_from"]
    qa = summary["evaluate"]["tasks"]["synth_qa"]
    assert qa["n"] > 0 and qa["errors"] == 0 and "vision" in qa["groups"]
    assert summary["evaluate"]["tracking_uri"] == uri
    assert (work / "eval" / "results.md").is_file()
    # The openai client got an answer about a raw mp4; the how-to names the store.
    assert summary["qa"]["video"].endswith(".mp4") and isinstance(summary["qa"]["answer"], str)
    assert f"-m mlflow ui --backend-store-uri {uri}" in howto
    assert not (tmp_path / "mlruns").exists() and not (ROOT / "mlruns").exists()


def test_how_to_without_keep_serving_starts_an_endpoint_on_8000(tmp_path):
    """Without --keep-serving the endpoint is gone, so the how-to starts one and calls that."""
    paths = quickstart.Paths(str(tmp_path))
    howto = quickstart.how_to(paths, None, ["checkpoint=models:/avray-quickstart/1",
                                            "http.port=41234"],
                              {"video": "/x/a.mp4", "question": "What colour?"})
    assert "-m pipelines.serve --config" in howto
    assert "checkpoint=models:/avray-quickstart/1" in howto and "http.port=8000" in howto
    assert "http.port=41234" not in howto
    assert "curl -s http://127.0.0.1:8000/v1/chat/completions" in howto
