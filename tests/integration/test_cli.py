"""The `avray` console script and the quickstart, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests
from mlflow.tracking import MlflowClient

from pipelines import quickstart, shards
from pipelines.corpora.base import read_manifest
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


@pytest.mark.slow
def test_quickstart_runs_end_to_end(tmp_path, ray_local):
    work = tmp_path / "qs"
    summary = quickstart.main(["--workdir", str(work), "--n", "4", "--align-steps", "3",
                               "--steps", "4"])
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
    # The openai client got an answer about a raw mp4; the how-to names the store and URL.
    assert summary["qa"]["video"].endswith(".mp4") and isinstance(summary["qa"]["answer"], str)
    howto = summary["howto"]
    assert f"-m mlflow ui --backend-store-uri {uri}" in howto
    # The endpoint is gone, so the how-to starts one on port 8000 and calls that.
    assert "checkpoint=models:/avray-quickstart/1" in howto and "http.port=8000" in howto
    assert "curl -s http://127.0.0.1:8000/v1/chat/completions" in howto
    assert not (tmp_path / "mlruns").exists() and not os.path.exists("mlruns")
    # Nothing left serving: the endpoint is gone.
    with pytest.raises(requests.ConnectionError):
        requests.get(summary["url"].removesuffix("/v1") + "/healthz", timeout=5)
