"""The `avray` console script and the quickstart, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

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
    summary = quickstart.main(["--workdir", str(tmp_path / "qs"), "--n", "4", "--steps", "4"])
    assert summary["clips_ok"] == 4 and summary["clips_failed"] == 0
    assert summary["train"]["step"] == 4
    assert summary["qa"]["question"] and isinstance(summary["qa"]["answer"], str)
    saved = json.loads((tmp_path / "qs" / "features" / "summary.json").read_text())
    assert saved["clips_ok"] == 4
    assert len(shards.written_clip_ids(str(tmp_path / "qs" / "features"))) == 4
    qa = summary["evaluate"]["tasks"]["synth_qa"]
    assert qa["n"] > 0 and qa["errors"] == 0 and "vision" in qa["groups"]
    assert (tmp_path / "qs" / "eval" / "results.md").is_file()
    # Evaluation logged into the quickstart's one MLflow store, artifacts beside it.
    assert summary["evaluate"]["tracking_uri"] == f"sqlite:///{tmp_path / 'qs' / 'runs' / 'mlflow.db'}"
    assert not (tmp_path / "mlruns").exists() and not os.path.exists("mlruns")
