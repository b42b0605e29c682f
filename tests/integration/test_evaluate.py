"""The evaluation job end to end: a real local Ray (Data actor pool), the tiny model trained
in the tests, real mp4 / flac media, a real MLflow server; the run's content is checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from pipelines import evaluate
from tests.media_factory import make_broken

pytestmark = pytest.mark.slow
LIBRI_ID = "1272-128104-0000"
LIBRI_TEXT = ("MISTER QUILTER IS THE APOSTLE OF THE MIDDLE CLASSES AND WE ARE GLAD TO "
              "WELCOME HIS GOSPEL")
JFK_TEXT = ("And so my fellow Americans, ask not what your country can do for you, ask what "
            "you can do for your country.")


def _trained_qa(synth_features, trained_tiny, tmp: Path) -> Path:
    """The questions the tiny model was trained on, as our jsonl format, plus a truncated
    and a zero-byte mp4 (they must land in the errors table, not stop the run)."""
    with open(synth_features["manifest"]) as f:
        uris = {r["clip_id"]: r["uri"] for r in map(json.loads, f)}
    lines = []
    for r in trained_tiny["rows"]:
        question = r["conversations"][0]["content"].split("\n", 1)[1]
        lines.append({"id": r["clip_id"], "video": uris[r["clip_id"]], "question": question,
                      "answer": r["conversations"][1]["content"],
                      "meta": {"clip_id": r["clip_id"]}})
    broken = make_broken(tmp)
    for name in ("corrupt", "empty"):
        lines.append({"id": f"broken_{name}", "video": str(broken[name]), "question": "What?",
                      "answer": "nothing"})
    path = tmp / "trained_qa.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _asr_sets(shared_media, tmp: Path) -> tuple[Path, Path]:
    """LibriSpeech's own layout for the dev-clean utterance; the JFK file as a jsonl item."""
    chapter = tmp / "LibriSpeech" / "dev-clean" / "1272" / "128104"
    chapter.mkdir(parents=True)
    shutil.copy(shared_media / f"{LIBRI_ID}.flac", chapter)
    (chapter / "1272-128104.trans.txt").write_text(f"{LIBRI_ID} {LIBRI_TEXT}\n")
    jfk = tmp / "jfk.jsonl"
    jfk.write_text(json.dumps({"id": "jfk", "audio": str(shared_media / "jfk.flac"),
                               "answer": JFK_TEXT}) + "\n")
    return tmp / "LibriSpeech" / "dev-clean", jfk


@pytest.fixture(scope="module")
def run(trained_tiny, synth_features, shared_media, mlflow_server, ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    qa = _trained_qa(synth_features, trained_tiny, tmp)
    libri, jfk = _asr_sets(shared_media, tmp)
    asr = {"prompt": "Transcribe the speech.", "metric": "wer", "normalise": "whisper_en",
           "modalities": ["audio"], "max_tokens": 24}
    config = {
        "name": "eval-test", "checkpoint": trained_tiny["checkpoint"], "output": str(tmp / "out"),
        "predictor": {"batch_size": 4, "num_cpus": 1},
        "tracking": {"uri": mlflow_server, "experiment": "eval-test"},
        "tasks": {
            "qa": {"adapter": "jsonl", "annotations": str(qa), "max_tokens": 8},
            "qa_features": {"adapter": "jsonl", "annotations": str(qa), "max_tokens": 8,
                            "features": synth_features["features"]},
            "synth_video_only": {"adapter": "synthetic", "annotations": synth_features["manifest"],
                                 "split": "train", "modalities": ["video"], "group_by": "family",
                                 "max_tokens": 8},
            "asr_librispeech": {"adapter": "librispeech", "annotations": str(libri), **asr},
            "asr_jfk": {"adapter": "jsonl", "annotations": str(jfk), **asr}}}
    path = tmp / "eval.yaml"
    path.write_text(yaml.safe_dump(config))
    summary = evaluate.main(["--config", str(path)])
    return {"summary": summary, "out": tmp / "out", "trained": trained_tiny}


def test_scores_and_files(run):
    tasks = run["summary"]["tasks"]
    qa = tasks["qa"]
    assert qa["n"] == len(run["trained"]["rows"]) and qa["errors"] == 2
    # The model was trained on exactly these questions: it answers most of them.
    assert qa["scores"]["accuracy"] >= 0.5
    assert qa["modality"] == "audio+video"
    # Stored features and raw media give the model the same input: the same answers.
    preds = {p: [json.loads(x) for x in open(run["out"] / "predictions" / f"{p}.jsonl")]
             for p in ("qa", "qa_features")}
    raw = {s["id"]: s["prediction"] for s in preds["qa"] if s["error"] is None}
    stored = {s["id"]: s["prediction"] for s in preds["qa_features"] if s["error"] is None}
    same = sum(raw[k] == stored.get(k) for k in raw)
    assert same >= len(raw) - 1, (raw, stored)
    # Errors are listed with their reason; a zero-byte file is not a crash.
    errors = [json.loads(x) for x in open(run["out"] / "errors.jsonl")]
    assert {(e["task"], e["id"]) for e in errors} >= {("qa", "broken_corrupt"),
                                                     ("qa", "broken_empty")}
    assert all(e["error"] for e in errors)
    video_only = tasks["synth_video_only"]
    assert video_only["modality"] == "video" and set(video_only["groups"]) <= {
        "vision", "audio", "sync", "order", "speech"} and "vision" in video_only["groups"]
    md = (run["out"] / "results.md").read_text()
    assert "| qa | audio+video | accuracy |" in md and "## By modality" in md
    assert "## synth_video_only by group" in md


def test_asr_on_real_recordings(run):
    tasks = run["summary"]["tasks"]
    for name, ref in (("asr_librispeech", LIBRI_TEXT), ("asr_jfk", JFK_TEXT)):
        task = tasks[name]
        assert task["n"] == 1 and task["errors"] == 0 and task["modality"] == "audio"
        assert task["scores"]["wer"] >= 0.0           # a tiny model: whatever it is
        [sample] = [json.loads(x) for x in open(run["out"] / "predictions" / f"{name}.jsonl")]
        assert sample["references"] == [ref] and isinstance(sample["prediction"], str)
    # The references' word counts, after Whisper's normaliser: 17 and 22 words.
    assert tasks["asr_librispeech"]["scores"]["ref_words"] == 17
    assert tasks["asr_jfk"]["scores"]["ref_words"] == 22


def test_mlflow_run_content(run):
    from mlflow.tracking import MlflowClient

    summary = run["summary"]
    client = MlflowClient(summary["tracking_uri"])
    mlrun = client.get_run(summary["run_id"])
    metrics = mlrun.data.metrics
    assert metrics["qa.accuracy"] == pytest.approx(summary["tasks"]["qa"]["scores"]["accuracy"])
    assert metrics["qa.errors"] == 2 and "asr_jfk.wer" in metrics
    assert "synth_video_only.vision.accuracy" in metrics
    assert mlrun.data.params["checkpoint"] == run["trained"]["checkpoint"]
    assert mlrun.data.tags["avray.checkpoint"] == run["trained"]["checkpoint"]
    assert mlrun.info.status == "FINISHED"
    names = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert {"results.json", "results.md", "errors.jsonl", "predictions"} <= names
    tables = {a.path for a in client.list_artifacts(mlrun.info.run_id, "predictions")}
    assert "predictions/qa.json" in tables
    local = client.download_artifacts(mlrun.info.run_id, "results.json")
    logged = json.loads(Path(local).read_text())
    assert logged["tasks"] == json.loads((run["out"] / "results.json").read_text())["tasks"]


def test_bad_config_fails_before_ray_naming_the_field(tmp_path, trained_tiny, capsys):
    missing = {"name": "x", "checkpoint": trained_tiny["checkpoint"], "tasks": {
        "asr": {"adapter": "librispeech", "annotations": str(tmp_path / "nowhere"),
                "metric": "wer"}}}
    unknown = {**missing, "tasks": {"asr": {"adapter": "nope", "annotations": "x"}}}
    no_features = {**missing, "tasks": {"asr": {"annotations": "x",
                                                "features": str(tmp_path / "none")}}}
    for config, field in ((missing, "tasks.asr"), (unknown, "tasks.asr.adapter"),
                          (no_features, "tasks.asr.features")):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(config))
        with pytest.raises(SystemExit) as exc:
            evaluate.main(["--config", str(path)])
        assert exc.value.code == 2
        assert f"config field '{field}" in capsys.readouterr().err
