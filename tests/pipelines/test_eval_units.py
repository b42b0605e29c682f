"""Evaluation pieces without Ray: config checks, prompts, chat requests, scoring."""

import json

import pytest

from av_model.configlib import ConfigError, from_dict
from pipelines import eval_report
from pipelines.eval_config import EvalConfig, TaskConfig
from pipelines.eval_predict import _restrict, chat_body
from pipelines.evaluate import join, prompt_text
from pipelines.eval_tasks.base import item
from pipelines.serve_predictor import GenRequest
from av_model.model import GenerateOptions

BASE = {"checkpoint": "ckpt", "tasks": {"t": {"annotations": "a.jsonl"}}}


@pytest.mark.parametrize("patch,field", [
    ({"tasks": {"t": {"annotations": "a", "metric": "bleu"}}}, "tasks.t.metric"),
    ({"tasks": {"t": {"annotations": "a", "prompt": "{query}"}}}, "tasks.t.prompt"),
    ({"tasks": {"t": {"annotations": "a", "modalities": ["smell"]}}}, "tasks.t.modalities"),
    ({"tasks": {"t": {"annotations": "a", "adapter": "coco"}}}, "tasks.t.adapter"),
    ({"tasks": {"t": {}}}, "tasks.t.annotations"),
    ({"only": ["missing"]}, "only"),
    ({"tasks": {}}, "tasks"),
    ({"checkpoint": ""}, "checkpoint"),
    ({"tasks": {"t": {"annotations": "a", "prompt": "{}"}}}, "tasks.t.prompt"),
    ({"tasks": {"t": {"annotations": "a", "prompt": "use {question"}}}, "tasks.t.prompt"),
    ({"only": []}, "only"),
    ({"tasks": {"a b": {"annotations": "a"}}}, "tasks"),
    ({"predictor": {"num_gpus": -1}}, "predictor.num_gpus"),
])
def test_config_errors_name_the_field(patch, field):
    with pytest.raises(ConfigError) as err:
        from_dict(EvalConfig, {**BASE, **patch})
    assert err.value.field == field


def test_only_selects_tasks_in_order():
    cfg = from_dict(EvalConfig, {"checkpoint": "c", "only": ["b"], "tasks": {
        "a": {"annotations": "x"}, "b": {"annotations": "y"}}})
    assert list(cfg.selected()) == ["b"]


def test_prompt_fills_question_and_lettered_choices():
    task = TaskConfig(annotations="x", prompt="{question}\n{choices}\nAnswer ({letters}).")
    it = item("q", question="Which?", references=["b"], choices=["a", "b"])
    assert prompt_text(task, it) == "Which?\n(A) a\n(B) b\nAnswer (A, B)."


def test_chat_body_puts_media_in_the_first_user_turn():
    history = [{"role": "user", "content": "Who is there?"},
               {"role": "assistant", "content": "A man."}]
    body = chat_body({"video": "/d/v.mp4", "audio": "s3://b/a.wav", "image": None,
                      "text": "What does he say?", "history": json.dumps(history)}, 7)
    first, second, last = body["messages"]
    assert first["content"][0] == {"type": "video_url", "video_url": {"url": "file:///d/v.mp4"}}
    assert first["content"][1] == {"type": "audio_url", "audio_url": {"url": "s3://b/a.wav"}}
    assert first["content"][2] == {"type": "text", "text": "Who is there?"}
    assert second == history[1] and last["content"] == [{"type": "text",
                                                         "text": "What does he say?"}]
    assert body["max_tokens"] == 7 and body["temperature"] == 0.0


def test_media_urls_are_absolute_and_encoded(tmp_path, monkeypatch):
    from urllib.parse import unquote, urlparse

    monkeypatch.chdir(tmp_path)
    body = chat_body({"video": "clips/a #1?.mp4", "text": "q", "history": "[]"}, 4)
    url = body["messages"][0]["content"][0]["video_url"]["url"]
    assert url.startswith("file:///") and "#" not in url and "?" not in url
    assert unquote(urlparse(url).path) == str(tmp_path / "clips" / "a #1?.mp4")


def test_restrict_drops_streams_the_task_does_not_give():
    import torch

    req = GenRequest([], torch.zeros(2, 1, 4), torch.zeros(5, 3), False, GenerateOptions())
    assert _restrict(req, ["video"]).audio is None
    assert _restrict(req, ["audio"]).video is None
    assert "none of the task's modalities" in _restrict(req, ["image"])
    image = GenRequest([], torch.zeros(1, 1, 4), None, True, GenerateOptions())
    assert _restrict(image, ["image"]).video is not None
    spoken = GenRequest([], torch.zeros(1, 1, 4), torch.zeros(5, 3), True, GenerateOptions())
    only_audio = _restrict(spoken, ["audio"])
    assert only_audio.video is None and only_audio.image is False


def test_join_and_score_count_errors_and_groups():
    items = {"t": [item(str(i), question="q", references=["red"], video="/v.mp4",
                        meta={"family": "vision" if i < 2 else "sync"}) for i in range(4)]}
    preds = [{"task": "t", "id": "0", "prediction": "Red.", "error": None, "finish_reason": "stop"},
             {"task": "t", "id": "1", "prediction": "blue", "error": None, "finish_reason": "stop"},
             {"task": "t", "id": "2", "prediction": None, "error": "video is empty",
              "finish_reason": None}]                # item 3: no prediction came back
    joined, errors = join(items, preds)
    assert [e["id"] for e in errors] == ["2", "3"]
    assert errors[1]["error"] == "no prediction came back"
    task = TaskConfig(annotations="x", modalities=["video"], group_by="family")
    result = eval_report.score("t", task, joined["t"])
    assert (result.n, result.errors, result.scores) == (2, 2, {"accuracy": 0.5})
    assert result.groups == {"vision": {"accuracy": 0.5, "n": 2.0}}
    assert result.modality == "video" and [s["score"] for s in result.samples[:2]] == [1.0, 0.0]
    assert eval_report.flat_metrics([result]) == {"t.accuracy": 0.5, "t.errors": 2.0,
                                                  "t.vision.accuracy": 0.5, "t.vision.n": 2.0}
    assert eval_report.metric_name("['Audio-Visual', 'Counting']") == "Audio-Visual_Counting"


def test_local_sqlite_store_keeps_artifacts_beside_it(tmp_path, monkeypatch):
    from pipelines.tracking import resolve_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, artifacts = resolve_uri(f"sqlite:///{tmp_path}/runs/mlflow.db", "ignored")
    assert artifacts == (tmp_path / "runs" / "mlartifacts").as_uri()
    assert resolve_uri("http://127.0.0.1:5000", "x") == ("http://127.0.0.1:5000", None)
    uri, artifacts = resolve_uri(None, str(tmp_path / "store"))
    assert uri == f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    assert artifacts == (tmp_path / "store" / "mlartifacts").as_uri()


def _batch(rows: list[dict]) -> dict:
    """Rows → the numpy batch Ray Data hands the predictor (None cells as object arrays)."""
    import numpy as np

    return {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}


def test_image_task_on_stored_features_answers_as_on_the_image(tiny_encoders, tmp_path):
    """Stored features carry no media part, so the item's own ``image`` column must say the
    visual is a still: an image-only task (Flickr30k, TextVQA, GQA) then predicts, and
    gives the answer the raw image gives."""
    import numpy as np
    import torch
    from PIL import Image

    from av_model import checkpoint
    from av_model.model import AVModel
    from pipelines import shards
    from pipelines.eval_config import PredictorConfig
    from pipelines.eval_predict import EvalPredictor
    from pipelines.serve_config import MediaPolicy, ServeConfig
    from pipelines.serve_predictor import AVPredictor
    from tests.av_model.model_helpers import tiny_config

    torch.manual_seed(0)
    ckpt = str(checkpoint.save(AVModel.build(tiny_config(tiny_encoders, mode="full"),
                                             load_encoders=False), tmp_path / "ckpt"))
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8)).save(image)
    body = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image.as_uri()}}]}]}
    still = AVPredictor(ServeConfig(checkpoint=ckpt, media=MediaPolicy(
        allowed_root=str(tmp_path)))).prepare(body).video            # (1, Nv, Dv)
    two_frames = np.concatenate([still.numpy()] * 2)
    shards.write_features(str(tmp_path / "feats"), [{"clip_id": "img1", "video": still.numpy()},
                                                    {"clip_id": "img2", "video": two_frames}],
                          {}, dtype="float32")
    task = {"annotations": "unused", "modalities": ["image"], "metric": "caption",
            "max_tokens": 4}
    cfg = from_dict(EvalConfig, {"checkpoint": ckpt, "predictor": {"device": "cpu"}, "tasks": {
        "raw": task, "stored": {**task, "features": str(tmp_path / "feats")}}})
    row = {"id": "1", "video": None, "audio": None, "image": str(image),
           "text": "Describe the image.", "history": "[]", "clip_id": "img1"}
    out = EvalPredictor(cfg)(_batch([{"task": "raw", **row}, {"task": "stored", **row},
                                     {"task": "stored", **row, "id": "2", "clip_id": "img2"}]))
    assert out["error"][:2] == [None, None]
    assert out["error"][2] == "clip 'img2' is an image but its stored features have 2 frames"
    assert out["prediction"][0] == out["prediction"][1]
    assert out["prompt_tokens"][0] == out["prompt_tokens"][1]


def _answered(rows: list[tuple[dict, str]]) -> list[dict]:
    """(item, prediction) pairs → joined rows as ``evaluate.join`` makes them."""
    return [{**it, "prediction": p, "finish_reason": "stop", "error": None} for it, p in rows]


CAPTIONS = [("a red circle then a blue square", ["A red circle, then a blue square.",
                                                 "a red circle and a blue square"], "vision"),
            ("a green circle", ["A green triangle."], "vision"),
            ("two beeps and a low tone", ["A low tone and two beeps."], "audio"),
            ("a low tone", ["A high tone."], "audio")]
CAPTION_TASK = TaskConfig(annotations="x", metric="caption", modalities=["image"],
                          normalise="none", group_by="family")


def _caption_rows() -> list[dict]:
    return _answered([(item(str(i), references=refs, image=f"/i/{i}.jpg",
                            meta={"family": family}), pred)
                      for i, (pred, refs, family) in enumerate(CAPTIONS)])


def test_caption_task_scores_are_the_caption_metrics(tmp_path, monkeypatch):
    """Scored on a machine without Java (PATH holds no java): METEOR would start a JVM per
    call (~7 s each, three calls here); the Java tokenizer is checked in test_eval_metrics."""
    from pipelines import eval_metrics

    monkeypatch.setenv("PATH", str(tmp_path))
    preds, refs = [c[0] for c in CAPTIONS], [c[1] for c in CAPTIONS]
    result = eval_report.score("flickr", CAPTION_TASK, _caption_rows())
    agg, per = eval_metrics.caption(preds, refs)
    assert result.scores == pytest.approx(agg) and result.primary == ("cider", agg["cider"])
    assert {"bleu_1", "bleu_4", "rouge_l", "cider"} <= set(result.scores)
    assert [s["score"] for s in result.samples] == pytest.approx(per)
    assert result.modality == "image" and (result.n, result.errors) == (4, 0)
    for name, idx in (("vision", [0, 1]), ("audio", [2, 3])):
        g_agg, _ = eval_metrics.caption([preds[i] for i in idx], [refs[i] for i in idx])
        assert result.groups[name] == pytest.approx({**g_agg, "n": 2.0})
    assert result.groups["vision"]["cider"] != result.groups["audio"]["cider"]


def test_choice_task_scores_picked_options_per_group():
    opts = ["red", "blue", "green"]
    rows = _answered([(item("a", references=["blue"], choices=opts, video="/v.mp4",
                            meta={"type": ["Causal"]}), "(B)"),
                      (item("b", references=["green"], choices=opts, video="/v.mp4",
                            meta={"type": ["Causal"]}), "It is the red one."),
                      (item("c", references=["red"], choices=opts, video="/v.mp4",
                            meta={"type": ["Temporal"]}), "red or blue"),
                      (item("d", references=["green"], choices=opts, video="/v.mp4",
                            meta={"type": ["Temporal"]}), "The answer is C")])
    task = TaskConfig(annotations="x", metric="choice_accuracy", group_by="type",
                      modalities=["video", "audio"])
    result = eval_report.score("nextqa", task, rows)
    assert result.scores == {"accuracy": 0.5, "unmatched": 0.25}
    assert [s["score"] for s in result.samples] == [1.0, 0.0, 0.0, 1.0]
    assert result.samples[0]["choices"] == opts
    assert result.groups == {"['Causal']": {"accuracy": 0.5, "unmatched": 0.0, "n": 2.0},
                             "['Temporal']": {"accuracy": 0.5, "unmatched": 0.5, "n": 2.0}}
    assert result.modality == "audio+video" and result.primary == ("accuracy", 0.5)
    assert "nextqa.Causal.accuracy" in eval_report.flat_metrics([result])


def test_vqa_task_scores_all_ten_answers_from_meta():
    """References hold the distinct answers (what accuracy would use); the VQA score counts
    annotators, so it must read ``meta.answers``: 2 of 10 saying "yes" give 0.6, not 1."""
    rows = _answered([
        (item("1", references=["no", "yes"], image="/i/1.jpg",
              meta={"answers": ["no"] * 8 + ["yes"] * 2, "type": "yes/no"}), "Yes"),
        (item("2", references=["two", "2"], image="/i/2.jpg",
              meta={"answers": ["two"] * 3 + ["2"] * 7, "type": "number"}), "two"),
        (item("3", references=["cat"], image="/i/3.jpg",
              meta={"answers": ["cat"] * 10, "type": "other"}), "a cat")])
    task = TaskConfig(annotations="x", metric="vqa_accuracy", group_by="type",
                      modalities=["image"])
    result = eval_report.score("textvqa", task, rows)
    assert [s["score"] for s in result.samples] == pytest.approx([0.6, 0.9, 1.0])
    assert result.scores == {"vqa_accuracy": pytest.approx(2.5 / 3)}
    assert result.groups == {"number": {"vqa_accuracy": pytest.approx(0.9), "n": 1.0},
                             "other": {"vqa_accuracy": 1.0, "n": 1.0},
                             "yes/no": {"vqa_accuracy": pytest.approx(0.6), "n": 1.0}}
    assert result.modality == "image" and result.primary[0] == "vqa_accuracy"


def test_skipped_caption_metrics_are_recorded_once_per_task(tmp_path, monkeypatch, caplog):
    """Without Java: METEOR and SPICE/SPIDEr are absent and the tokenisation approximate;
    the reasons reach results.json, results.md and MLflow tags, and the log says it once
    for the task, not again for each group."""
    import logging

    from pipelines.tracking import Tracker

    with monkeypatch.context() as env, caplog.at_level(logging.WARNING):
        env.setenv("PATH", str(tmp_path))
        result = eval_report.score("flickr", CAPTION_TASK, _caption_rows())
    assert set(result.skipped) == {"ptb_tokenizer", "meteor", "spice", "spider"}
    assert "meteor" not in result.scores and "spice" not in result.scores
    assert "java not on PATH" in result.skipped["meteor"]
    assert "Java runtime" in result.skipped["spice"]
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sorted(logged) == sorted(f"task flickr: {m} {why}" for m, why in result.skipped.items())
    plain = eval_report.score("qa", TaskConfig(annotations="x"), _answered(
        [(item("q", references=["red"], video="/v.mp4"), "red")]))
    paths = eval_report.write(str(tmp_path / "out"), [result, plain], [], "ckpt")
    tasks = json.loads(open(paths["json"]).read())["tasks"]
    assert tasks["flickr"]["skipped"] == result.skipped and tasks["qa"]["skipped"] == {}
    md = open(paths["markdown"]).read()
    assert "## Skipped or approximated metrics" in md
    assert f"| flickr | meteor | {result.skipped['meteor']} |" in md
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path), "skips", run_name="r")
    eval_report.log_mlflow(tracker, [result, plain], [], "ckpt", log_predictions=False)
    tags = tracker.client.get_run(tracker.run_id).data.tags
    assert {k: v for k, v in tags.items() if k.startswith("avray.skipped.")} == {
        f"avray.skipped.flickr.{m}": why for m, why in result.skipped.items()}


def test_vqa_accuracy_task_without_annotator_answers_fails_before_ray(tmp_path):
    """Scored against its one reference, an item would always get 0 (no *other* annotator
    agrees): a vqa_accuracy task whose items lack meta.answers is a config error."""
    from pipelines.evaluate import load_tasks

    lines = [{"id": "1", "image": "/i/1.jpg", "answer": "cat", "meta": {"answers": ["cat"] * 10}},
             {"id": "2", "image": "/i/2.jpg", "answer": "dog"}]
    path = tmp_path / "vqa.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    task = {"adapter": "jsonl", "annotations": str(path), "metric": "vqa_accuracy"}
    cfg = from_dict(EvalConfig, {"checkpoint": "c", "tasks": {"vqa": task}})
    with pytest.raises(ConfigError) as err:
        load_tasks(cfg)
    assert err.value.field == "tasks.vqa.metric" and "'2'" in str(err.value)
    ok = from_dict(EvalConfig, {"checkpoint": "c", "tasks": {"vqa": {**task, "limit": 1}}})
    assert [it["id"] for it in load_tasks(ok)["vqa"]] == ["1"]
