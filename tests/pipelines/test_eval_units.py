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
