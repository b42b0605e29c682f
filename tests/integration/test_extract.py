"""The feature-extraction job end to end: real Ray, real mp4/flac files, real S3 server."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections import Counter

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines import extract_features, shards
from pipelines.corpora import synthetic
from pipelines.corpora.base import manifest_row, read_manifest, write_manifest
from tests.conftest import ROOT
from tests.media_factory import make_broken, make_video

CONFIG = str(ROOT / "pipelines" / "configs" / "extract" / "tiny.yaml")
N_SYNTH = 16


def _overrides(manifest: str, output: str, enc: dict[str, str], *extra: str) -> list[str]:
    return ["--config", CONFIG, f"corpus.path={manifest}", f"output={output}",
            f"encoders.visual.name_or_path={enc['visual']}",
            f"encoders.audio.name_or_path={enc['audio']}", *extra]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_media) -> dict:
    """16 synthetic clips (2 without audio) + an audio-less video, a flac, and 4 bad files."""
    root = tmp_path_factory.mktemp("corpus")
    cfg = synthetic.SynthConfig(n=N_SYNTH, seed=3, min_duration_s=5.5, max_duration_s=7.0,
                                max_shapes=2, no_audio_fraction=0.15, speech=False)
    rows = synthetic.generate(cfg, str(root / "synth"))
    broken = make_broken(root)
    extra = {
        "silent_video": make_video(root / "silent.mp4", 3.0, audio=False),
        "speech_flac": shared_media / "1272-128104-0000.flac",
        **broken, "missing": root / "missing.mp4",
    }
    rows += [manifest_row(name, str(path), "test") for name, path in extra.items()]
    rows.append(manifest_row("window", rows[0]["uri"], "test", start_s=1.0, end_s=4.0))
    manifest = write_manifest(rows, str(root / "manifest.jsonl"))
    with open(manifest, "a") as f:  # a row no adapter would write: a number as the caption
        f.write(json.dumps({"clip_id": "bad_row", "uri": rows[0]["uri"], "caption": 7}) + "\n")
    return {"manifest": manifest, "rows": rows, "root": root}


def _features(output: str):
    return pq.read_table(os.path.join(output, shards.FEATURES_DIR)).to_pylist()


def test_extract_end_to_end(corpus, tiny_encoders, ray_local, tmp_path):
    out = str(tmp_path / "features")
    summary = extract_features.main(_overrides(corpus["manifest"], out, tiny_encoders))
    n_ok = N_SYNTH + 3
    assert summary["clips_ok"] == n_ok and summary["clips_failed"] == 5
    assert summary["failed_by_reason"] == {"corrupt_or_unsupported": 2, "empty_file": 1,
                                           "missing_file": 1, "bad_metadata": 1}
    feats = _features(out)
    assert sorted(r["clip_id"] for r in feats) == sorted(
        r["clip_id"] for r in corpus["rows"] if r["clip_id"] not in
        {"corrupt", "empty", "text", "missing"})
    errors = shards.read_errors(out).to_pylist()
    assert sorted((e["clip_id"], e["stage"], e["error"]) for e in errors) == [
        ("bad_row", "manifest", "bad_metadata"),
        ("corrupt", "decode", "corrupt_or_unsupported"), ("empty", "decode", "empty_file"),
        ("missing", "manifest", "missing_file"), ("text", "decode", "corrupt_or_unsupported")]
    # Each error says what was wrong, for a person reading the table.
    messages = {e["clip_id"]: (e["uri"], e["message"]) for e in errors}
    assert messages["empty"][1] == f"zero-byte file: {messages['empty'][0]}"
    assert messages["missing"][1] == f"media file not found: {messages['missing'][0]}"
    assert "caption" in messages["bad_row"][1]
    assert all(messages[k][1].strip() for k in ("corrupt", "text"))
    by_id = {r["clip_id"]: r for r in corpus["rows"]}
    no_audio = [r for r in feats if not r["has_audio"]]
    assert {r["clip_id"] for r in no_audio} >= {"silent_video"} and len(no_audio) >= 2
    for row in feats:
        video, audio, d = np.asarray(row["video"]), np.asarray(row["audio"]), row["duration_s"]
        assert video.dtype == np.float16 and audio.dtype == np.float16
        if row["has_video"]:
            assert video.shape == (math.ceil(d * 2 - 1e-6), 17, 32), row["clip_id"]
        else:
            assert row["clip_id"] == "speech_flac" and video.shape == (0, 17, 32)
        assert audio.shape == ((math.ceil(d * 50 - 1e-6) if row["has_audio"] else 0), 32)
        src = by_id[row["clip_id"]]
        assert (row["caption"], row["conversations"], row["split"]) == (
            src["caption"], src["conversations"], src["split"])
        if src["end_s"]:
            assert d == pytest.approx(src["end_s"] - (src["start_s"] or 0.0), abs=0.11)
    durations = {r["clip_id"]: r["duration_s"] for r in feats}
    # The summary's media hours are the written clips' durations; its rate is the clips the
    # pipeline processed (written, or failed in decoding: 3) per second of the run.
    assert summary["media_hours"] == pytest.approx(sum(durations.values()) / 3600, abs=1e-4)
    assert summary["clips_per_s"] == pytest.approx((n_ok + 3) / summary["seconds"], rel=0.01)
    assert summary["clips_truncated"] == 0 and not any(r["truncated"] for r in feats)
    assert durations["speech_flac"] == pytest.approx(5.855)
    assert durations["window"] == pytest.approx(3.0)
    window = next(r for r in feats if r["clip_id"] == "window")
    whole = next(r for r in feats if r["clip_id"] == corpus["rows"][0]["clip_id"])
    # The window's frames are the whole clip's frames from t = 1 s on (2 slots later).
    np.testing.assert_array_equal(np.asarray(window["video"]), np.asarray(whole["video"])[2:8])
    meta = shards.read_feature_metadata(out)
    assert meta["encoders"]["visual"]["name_or_path"] == tiny_encoders["visual"]
    assert (meta["fps"], meta["audio_rate_hz"], meta["frame_size"]) == (2.0, 50.0, 32)

    # Training reads the shards with Ray Data: tensor columns come back as arrays.
    import ray.data

    batch = next(iter(ray.data.read_parquet(os.path.join(out, shards.FEATURES_DIR))
                      .iter_batches(batch_size=4, batch_format="numpy")))
    assert batch["video"][0].ndim == 3 and batch["audio"][0].shape[-1] == 32

    # A rerun skips what is written and retries (and again records) the failures.
    again = extract_features.main(_overrides(corpus["manifest"], out, tiny_encoders))
    assert (again["clips_skipped_existing"], again["clips_ok"], again["clips_failed"]) == (n_ok, 0, 5)
    assert len(_features(out)) == n_ok and shards.read_errors(out).num_rows == 5
    skip = extract_features.main(_overrides(corpus["manifest"], out, tiny_encoders,
                                            "retry_failed=false"))
    assert skip["clips_skipped_existing"] == n_ok + 3 and skip["clips_failed"] == 2

    # Batching knobs may change between runs; feature-shaping settings may not.
    tuned = extract_features.main(_overrides(corpus["manifest"], out, tiny_encoders,
                                             "encoders.visual.frames_per_forward=4"))
    assert tuned["clips_skipped_existing"] == n_ok
    # Other encoder settings into the same output would mix feature spaces: refused.
    with pytest.raises(SystemExit) as exit_info:
        extract_features.main(_overrides(corpus["manifest"], out, tiny_encoders,
                                         "encoders.visual.token_mode=cls"))
    assert exit_info.value.code == 2


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and every Ray process it started (as when its node dies)."""
    subprocess.run(["pkill", "-9", "-s", str(proc.pid)], check=False)
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and subprocess.run(
            ["pgrep", "-s", str(proc.pid)], capture_output=True).returncode == 0:
        subprocess.run(["pkill", "-9", "-s", str(proc.pid)], check=False)
        time.sleep(0.2)


@pytest.mark.slow
def test_killed_run_then_rerun_leaves_each_clip_once(corpus, tiny_encoders, ray_local, tmp_path):
    out = tmp_path / "features"
    synth_rows = [r for r in corpus["rows"] if r["clip_id"].startswith("synth_")]
    manifest = write_manifest(synth_rows, str(tmp_path / "m.jsonl"))
    cmd = [sys.executable, "-m", "pipelines.extract_features",
           *_overrides(manifest, str(out), tiny_encoders, "rows_per_shard=2",  # stream clip
                       "decode.batch_size=1", "decode.max_tasks=1",  # by clip, so shards
                       "visual_pool.batch_size=1", "ray.num_cpus=2")]  # land one by one
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    feature_dir = out / shards.FEATURES_DIR
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if feature_dir.is_dir() and len(list(feature_dir.glob("part-*.parquet"))) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the job finished before it could be killed"
    _kill_session(proc)
    written_before = shards.written_clip_ids(str(out))
    assert 0 < len(written_before) < len(synth_rows)

    summary = extract_features.main(_overrides(manifest, str(out), tiny_encoders))
    assert summary["clips_skipped_existing"] == len(written_before)
    ids = [r["clip_id"] for r in _features(str(out))]
    want = Counter(r["clip_id"] for r in synth_rows)
    assert Counter(ids) == want, (Counter(ids) - want, want - Counter(ids), sorted(written_before))
    assert not list(feature_dir.glob(".tmp-*"))


@pytest.mark.parametrize("fused", [True, False])
def test_extract_s3_to_s3_with_audio_events(corpus, tiny_encoders, ray_local, s3_server, fused):
    s3 = boto3.client("s3")
    bucket = f"corpus-{'fused' if fused else 'pools'}"
    s3.create_bucket(Bucket=bucket)
    rows = []
    for row in [r for r in corpus["rows"] if r["clip_id"].startswith("synth_")][:3]:
        key = f"media/{row['clip_id']}.mp4"
        s3.upload_file(row["uri"], bucket, key)
        rows.append({**row, "uri": f"s3://{bucket}/{key}"})
    rows.append(manifest_row("gone", f"s3://{bucket}/media/gone.mp4", "test"))
    manifest = write_manifest(rows, f"s3://{bucket}/manifest.parquet")
    assert [r["clip_id"] for r in read_manifest(manifest)] == [r["clip_id"] for r in rows]
    out = f"s3://{bucket}/features"
    summary = extract_features.main(_overrides(
        manifest, out, tiny_encoders, f"fuse_encoders={str(fused).lower()}",
        f"encoders.audio_events.name_or_path={tiny_encoders['audio_events']}"))
    assert (summary["clips_ok"], summary["failed_by_reason"]) == (3, {"missing_file": 1})
    assert shards.written_clip_ids(out) == {r["clip_id"] for r in rows[:3]}
    import ray.data

    ds = ray.data.read_parquet(f"{out}/features", filesystem=shards.storage.filesystem(out)[0])
    for row in ds.take_all():
        events, d = row["audio_events"], row["duration_s"]
        assert events.shape == ((math.ceil(d * 10 - 1e-6) if row["has_audio"] else 0), 32)
    assert shards.read_feature_metadata(out)["audio_events_rate_hz"] == 10.0


def test_webvid_adapter_into_extraction(tiny_encoders, ray_local, tmp_path, shared_media):
    """Real WebVid metadata rows; 2 of 20 videos present, the rest become errors."""
    import csv

    with open(shared_media / "webvid_sample.csv") as f:
        sample = list(csv.DictReader(f))
    for row in sample[:2]:
        target = tmp_path / "videos" / row["page_dir"] / f"{row['videoid']}.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        make_video(target, 2.0)
    out = str(tmp_path / "features")
    summary = extract_features.main(_overrides(  # separate visual and audio actor pools
        str(shared_media / "webvid_sample.csv"), out, tiny_encoders, "corpus.name=webvid",
        f"corpus.media_root={tmp_path / 'videos'}", "fuse_encoders=false",
        "max_duration_s=1.5"))
    assert summary["clips_ok"] == 2 and summary["failed_by_reason"] == {"missing_file": 18}
    feats = {r["clip_id"]: r for r in _features(out)}
    assert feats[f"webvid_{sample[0]['videoid']}"]["caption"] == sample[0]["name"]
    # The 2 s videos are cut at max_duration_s, flagged, and counted: never silently.
    assert summary["clips_truncated"] == 2
    for row in feats.values():
        assert row["truncated"] and row["duration_s"] == pytest.approx(1.5)
        assert np.asarray(row["video"]).shape[0] == 3 and np.asarray(row["audio"]).shape[0] == 75
    errors = shards.read_errors(out).to_pylist()
    assert len(errors) == 18 and {e["error"] for e in errors} == {"missing_file"}


@pytest.mark.parametrize("override,field", [("visual_pool.batch_size=0", "visual_pool.batch_size"),
                                            ("corpus.pth=x", "corpus.pth"),
                                            ("corpus.name=webvidd", "corpus.name"),
                                            ("encoders.fps=-1", "encoders.fps"),
                                            ("encoders.visual.layer=9", "encoders.visual.layer")])
def test_bad_config_fails_before_any_work(tmp_path, tiny_encoders, override, field):
    out = tmp_path / "never"
    res = subprocess.run([sys.executable, "-m", "pipelines.extract_features", "--config", CONFIG,
                          f"output={out}", "corpus.path=/nowhere.jsonl",
                          f"encoders.visual.name_or_path={tiny_encoders['visual']}", override],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and f"'{field}'" in res.stderr
    assert not out.exists()


def test_job_fails_when_every_clip_fails(tmp_path, tiny_encoders, ray_local):
    bad = make_broken(tmp_path)
    manifest = write_manifest([manifest_row(k, str(p), "test") for k, p in bad.items()],
                              str(tmp_path / "m.jsonl"))
    with pytest.raises(SystemExit) as exit_info:
        extract_features.main(_overrides(manifest, str(tmp_path / "out"), tiny_encoders))
    assert exit_info.value.code == 1
    assert shards.read_errors(str(tmp_path / "out")).num_rows == 3
