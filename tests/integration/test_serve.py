"""The serving app for real: Ray Serve on 127.0.0.1, the `openai` client, a model trained in
the tests on the synthetic corpus, real mp4/wav/flac/png media, and a matrix of bad input."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import requests
import soundfile as sf

from av_model.configlib import load_config
from pipelines import serve as serve_job
from pipelines.serve_config import ServeConfig
from pipelines.jobs import free_port
from tests.conftest import ROOT
from tests.media_factory import make_broken, make_video

CPU = str(ROOT / "pipelines" / "configs" / "serve" / "cpu.yaml")
pytestmark = pytest.mark.slow


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def media(synth_features, tmp_path_factory, shared_media) -> dict[str, Path]:
    """Extra media inside the allowed root, plus a good mp4 outside it and a symlink to it."""
    extra = Path(synth_features["root"]) / "extra"
    extra.mkdir(exist_ok=True)
    outside = tmp_path_factory.mktemp("outside")
    out = {"outside": make_video(outside / "outside.mp4", 2.0),
           "long": make_video(extra / "long.mp4", 25.0, size="64x48", fps=5),
           "medium": make_video(extra / "medium.mp4", 12.0, size="64x48", fps=5),
           "flac": Path(shutil.copy(shared_media / "jfk.flac", extra / "jfk.flac")),
           **make_broken(extra)}
    (extra / "escape.mp4").symlink_to(out["outside"])
    out["escape"] = extra / "escape.mp4"
    return out


@pytest.fixture(scope="module")
def server(trained_tiny, synth_features, media, ray_local):
    from ray import serve

    cfg = load_config(ServeConfig, CPU, [
        f"checkpoint={trained_tiny['checkpoint']}", "model_name=tiny-av",
        f"media.allowed_root={synth_features['root']}", "media.max_video_s=20",
        "media.max_frames=20", "media.max_data_bytes=1048576", f"http.port={free_port()}",
        "batching.max_batch_size=16",
        "batching.batch_wait_timeout_s=0.05"])
    url = serve_job.start(cfg)
    yield {"url": url, "cfg": cfg}
    serve.shutdown()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server["url"] + "/v1", api_key="unused", max_retries=0, timeout=120)


def _clips(synth_features, trained_tiny) -> list[dict]:
    """Training clips with their mp4 and the (question, answer) the model was trained on."""
    with open(synth_features["manifest"]) as f:
        uris = {r["clip_id"]: r["uri"] for r in map(json.loads, f)}
    out = []
    for r in trained_tiny["rows"]:
        question = r["conversations"][0]["content"].split("\n", 1)[1]
        out.append({"uri": "file://" + uris[r["clip_id"]], "question": question,
                    "answer": r["conversations"][1]["content"]})
    return out


def _video_msg(uri: str, text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": uri}},
                                         {"type": "text", "text": text}]}]


def _stats(server, deployment: str) -> dict:
    from ray import serve

    handle = serve.get_deployment_handle(deployment, app_name=server["cfg"].app_name)
    return handle.stats.remote().result()


def test_models_health_and_openapi(client, server):
    assert [m.id for m in client.models.list().data] == ["tiny-av"]
    assert requests.get(server["url"] + "/healthz").json()["status"] == "ok"
    spec = requests.get(server["url"] + "/openapi.json").json()
    assert "/v1/chat/completions" in spec["paths"]
    assert requests.get(server["url"] + "/docs").status_code == 200


def test_text_only(client):
    r = client.chat.completions.create(model="tiny-av", max_tokens=5, temperature=0,
                                       messages=[{"role": "user", "content": "Hello there"}])
    choice = r.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_trained_model_answers_about_its_clips(client, synth_features, trained_tiny):
    """Raw mp4 in, through decode → encoders → connector → LLM, and the answers are right."""
    clips = _clips(synth_features, trained_tiny)
    got = [client.chat.completions.create(model="tiny-av", temperature=0, max_tokens=8,
                                          messages=_video_msg(c["uri"], c["question"])
                                          ).choices[0].message.content for c in clips]
    assert got == [c["answer"] for c in clips]


def test_follow_up_turn_reuses_the_features(client, server, synth_features, trained_tiny):
    clip = _clips(synth_features, trained_tiny)[0]
    first = client.chat.completions.create(model="tiny-av", temperature=0, max_tokens=8,
                                           messages=_video_msg(clip["uri"], clip["question"]))
    before = _stats(server, "Encoder")
    messages = _video_msg(clip["uri"], clip["question"]) + [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And what else?"}]
    second = client.chat.completions.create(model="tiny-av", temperature=0, max_tokens=4,
                                            messages=messages)
    after = _stats(server, "Encoder")
    assert second.usage.prompt_tokens > first.usage.prompt_tokens
    assert after["hits"] == before["hits"] + 1 and after["misses"] == before["misses"]


def test_streaming_matches_the_plain_answer(client, server, synth_features, trained_tiny):
    clip = _clips(synth_features, trained_tiny)[1]
    kw = dict(model="tiny-av", temperature=0, max_tokens=8,
              messages=_video_msg(clip["uri"], clip["question"]))
    plain = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True,
                                                 stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content == clip["answer"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    # the wire format itself: `data: <chunk>` events, then `data: [DONE]`
    with requests.post(server["url"] + "/v1/chat/completions", json={**kw, "stream": True},
                       stream=True, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines(decode_unicode=True) if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    events = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    for e in events:
        assert (e["object"], e["id"], e["model"]) == ("chat.completion.chunk", events[0]["id"],
                                                      "tiny-av") and isinstance(e["created"], int)
        assert [(c["index"], sorted(c)) for c in e["choices"]] == [
            (0, ["delta", "finish_reason", "index", "logprobs"])], e
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == clip["answer"]
    assert [e["choices"][0]["finish_reason"] for e in events] == [None] * (len(events) - 1) + \
        ["stop"]


def test_stop_and_top_p_reach_generation(client, synth_features, trained_tiny):
    """`stop` cuts the answer where the plain one has that text (streamed too); `top_p`
    near 0 leaves only the likeliest token, so hot sampling gives the greedy answer, which
    hot sampling without it does not."""
    clip = _clips(synth_features, trained_tiny)[2]
    kw = dict(model="tiny-av", max_tokens=8, temperature=0,
              messages=_video_msg(clip["uri"], clip["question"]))
    plain = client.chat.completions.create(**kw).choices[0].message.content
    stop = plain.split()[-1]
    cut = client.chat.completions.create(stop=[stop], **kw).choices[0]
    assert cut.message.content == plain[:plain.index(stop)].strip() != plain
    assert cut.finish_reason == "stop"
    streamed = client.chat.completions.create(stop=stop, stream=True, **kw)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == \
        cut.message.content
    q = dict(model="tiny-av", max_tokens=8, messages=[{"role": "user", "content": "Say more."}])

    def answer(**sampling) -> str:
        return client.chat.completions.create(**q, **sampling).choices[0].message.content

    greedy = answer(temperature=0)
    assert [answer(temperature=2, top_p=1e-6) for _ in range(2)] == [greedy, greedy]
    assert any(answer(temperature=2) != greedy for _ in range(4))


def test_input_audio_image_and_audio_url(client, media):
    t = np.arange(32000) / 16000
    wav = io.BytesIO()
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, format="WAV")
    from PIL import Image

    png = io.BytesIO()
    Image.fromarray(np.full((40, 60, 3), (200, 30, 30), np.uint8)).save(png, format="PNG")
    text_only = client.chat.completions.create(
        model="tiny-av", max_tokens=2, messages=[{"role": "user", "content": "What is it?"}])
    parts = {
        "input_audio": {"type": "input_audio",
                        "input_audio": {"data": _b64(wav.getvalue()), "format": "wav"}},
        "image_url": {"type": "image_url", "image_url": {
            "url": "data:image/png;base64," + _b64(png.getvalue())}},
        "audio_url": {"type": "audio_url", "audio_url": {"url": f"file://{media['flac']}"}},
    }
    for name, part in parts.items():
        r = client.chat.completions.create(
            model="tiny-av", max_tokens=2, temperature=0,
            messages=[{"role": "user", "content": [part, {"type": "text", "text": "What is it?"}]}])
        assert r.usage.prompt_tokens > text_only.usage.prompt_tokens, name  # media positions
    # an image with a separate audio track, in one conversation
    r = client.chat.completions.create(model="tiny-av", max_tokens=2, messages=[
        {"role": "user", "content": [parts["image_url"], parts["input_audio"],
                                     {"type": "text", "text": "What is it?"}]}])
    assert r.choices[0].message.content is not None


def _post(server, body, raw: bytes | Iterator[bytes] | None = None, headers=None):
    """POST to the chat endpoint: ``body`` as JSON, or ``raw`` bytes (an iterator of them
    is sent chunked, with no Content-Length)."""
    url = server["url"] + "/v1/chat/completions"
    if raw is not None:
        return requests.post(url, data=raw, headers={"content-type": "application/json"})
    return requests.post(url, json=body, headers=headers)


def test_bad_input_gets_4xx_and_the_server_keeps_serving(server, media, synth_features):
    def video(url):
        return {"model": "tiny-av", "messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "?"}]}]}

    root = synth_features["root"]
    big = _b64(os.urandom(1_200_000))
    # the default cap leaves room for two data: payloads at media.max_data_bytes
    over_cap = b'{"model": "tiny-av", "messages": [{"role": "user", "content": "%s"}]}' % (
        b"x" * server["cfg"].max_body_bytes)
    cases = {
        "bad json": (None, b'{"model": "tiny-av", "messages": [', 400, None),
        "no messages": ({"model": "tiny-av"}, None, 400, "messages"),
        "unknown part type": ({"model": "tiny-av", "messages": [{"role": "user", "content": [
            {"type": "file", "file": {}}]}]}, None, 400, None),
        "unknown model": ({"model": "gpt-9", "messages": [
            {"role": "user", "content": "hi"}]}, None, 404, "model"),
        "outside root": (video(f"file://{media['outside']}"), None, 400, "url_not_allowed"),
        "traversal": (video(f"file://{root}/../../../etc/passwd"), None, 400, "url_not_allowed"),
        "symlink escape": (video(f"file://{media['escape']}"), None, 400, "url_not_allowed"),
        "missing file": (video(f"file://{root}/nope.mp4"), None, 400, "media_not_found"),
        "s3 disabled": (video("s3://bucket/clip.mp4"), None, 400, "url_not_allowed"),
        "http scheme": (video("http://127.0.0.1:1/clip.mp4"), None, 400, "unsupported_url"),
        "bad base64": (video("data:video/mp4;base64,@@@@"), None, 400, "bad_base64"),
        "data too large": (video("data:video/mp4;base64," + big), None, 400, "media_too_large"),
        "corrupt mp4": (video(f"file://{media['corrupt']}"), None, 400, "corrupt_or_unsupported"),
        "empty mp4": (video(f"file://{media['empty']}"), None, 400, "empty_file"),
        "text as mp4": (video(f"file://{media['text']}"), None, 400, "corrupt_or_unsupported"),
        "too long": (video(f"file://{media['long']}"), None, 400, "media_too_long"),
        "flac as image": ({"model": "tiny-av", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": f"file://{media['flac']}"}}]}]},
            None, 400, "corrupt_or_unsupported"),
        "two videos": ({"model": "tiny-av", "messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": f"file://{media['long']}"}},
            {"type": "video_url", "video_url": {"url": f"file://{media['long']}"}}]}]},
            None, 400, None),
        "reserved token": ({"model": "tiny-av", "messages": [
            {"role": "user", "content": "<VIS> hi"}]}, None, 400, None),
        "ends with assistant": ({"model": "tiny-av", "messages": [
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
            None, 400, None),
        "n=2": ({"model": "tiny-av", "n": 2, "messages": [
            {"role": "user", "content": "hi"}]}, None, 400, None),
        "max_tokens over limit": ({"model": "tiny-av", "max_tokens": 100000, "messages": [
            {"role": "user", "content": "hi"}]}, None, 400, None),
        "temperature range": ({"model": "tiny-av", "temperature": 7, "messages": [
            {"role": "user", "content": "hi"}]}, None, 400, None),
        "too many frames": (video(f"file://{media['medium']}"), None, 400, "media_too_long"),
        "streamed, missing file": ({**video(f"file://{root}/nope.mp4"), "stream": True}, None,
                                   400, "media_not_found"),
        "streamed, corrupt mp4": ({**video(f"file://{media['corrupt']}"), "stream": True},
                                  None, 400, "corrupt_or_unsupported"),
        "body over the cap": (None, over_cap, 413, "request_too_large"),
        "chunked body over the cap": (None, (over_cap[i:i + 65536] for i in range(
            0, len(over_cap), 65536)), 413, "request_too_large"),
    }
    errors = {}
    for name, (body, raw, status, code) in cases.items():
        r = _post(server, body, raw)
        assert r.status_code == status, (name, r.status_code, r.text)
        assert r.headers["content-type"] == "application/json", (name, r.text)  # not SSE
        errors[name] = err = r.json()["error"]
        assert err["message"] and err["type"], name
        if code is not None:
            assert code in (err["code"], err["param"]), (name, err)
    assert errors["bad json"]["param"] is None and "frames" in errors["too many frames"][
        "message"]
    wrong_method = requests.get(server["url"] + "/v1/chat/completions")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    no_route = requests.post(server["url"] + "/v1/completions", json={})
    assert no_route.status_code == 404 and no_route.json()["error"]["code"] == "not_found"
    ok = _post(server, {"model": "tiny-av", "max_tokens": 2,
                        "messages": [{"role": "user", "content": "still there?"}]})
    assert ok.status_code == 200, ok.text


def test_32_concurrent_requests_all_succeed_and_are_batched(client, server, synth_features,
                                                            trained_tiny):
    clips = _clips(synth_features, trained_tiny)
    before = _stats(server, "Generator")

    def ask(i):
        if i % 2:
            msgs = [{"role": "user", "content": f"Question number {i}?"}]
        else:
            c = clips[i % len(clips)]
            msgs = _video_msg(c["uri"], c["question"])
        return client.chat.completions.create(model="tiny-av", temperature=0, max_tokens=6,
                                              messages=msgs)

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(ask, range(32)))
    assert all(r.choices[0].message.content is not None for r in results)
    after = _stats(server, "Generator")
    assert after["requests"] - before["requests"] == 32
    assert after["batches"] - before["batches"] < 32  # some requests shared a forward pass


def test_encoders_in_generator_layout(trained_tiny, synth_features, server):
    """A second app with the encoders folded into the generator and batching off: the same
    answers, a follow-up turn hits the generator's own feature cache, refusals are 4xx."""
    from openai import OpenAI
    from ray import serve

    cfg = load_config(ServeConfig, CPU, [
        f"checkpoint={trained_tiny['checkpoint']}", "model_name=tiny-av", "app_name=fused",
        "route_prefix=/fused", "deployments.encoders_in_generator=true",
        "batching.max_batch_size=1", f"media.allowed_root={synth_features['root']}",
        f"http.port={server['cfg'].http.port}"])
    url = serve_job.start(cfg)
    try:
        names = serve.status().applications["fused"].deployments
        assert sorted(names) == ["ChatIngress", "Decoder", "Generator"]
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        clip = _clips(synth_features, trained_tiny)[0]
        first = client.chat.completions.create(model="tiny-av", temperature=0, max_tokens=8,
                                               messages=_video_msg(clip["uri"], clip["question"]))
        assert first.choices[0].message.content == clip["answer"]
        handle = serve.get_deployment_handle("Generator", app_name="fused")
        before = handle.stats.remote().result()
        follow = _video_msg(clip["uri"], clip["question"]) + [
            {"role": "assistant", "content": clip["answer"]},
            {"role": "user", "content": "And what else?"}]
        client.chat.completions.create(model="tiny-av", max_tokens=3, messages=follow)
        after = handle.stats.remote().result()
        assert (after["hits"], after["misses"]) == (before["hits"] + 1, before["misses"])
        assert after["max_batch"] == 1 and after["requests"] == before["requests"] + 1
        refused = _post({"url": url}, {"model": "tiny-av", "messages": _video_msg(
            f"file://{synth_features['root']}/nope.mp4", "?")})
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "media_not_found"
    finally:
        serve.delete("fused")


def test_api_key_and_request_timeout(trained_tiny, synth_features, server, tmp_path):
    """A second app (same HTTP proxy) with a key file and a 5 ms request budget: requests
    without the key are refused before any work; with it they run out of time (504)."""
    from openai import AuthenticationError, OpenAI
    from ray import serve

    key = tmp_path / "key"
    key.write_text("s3cret\n")
    cfg = load_config(ServeConfig, CPU, [
        f"checkpoint={trained_tiny['checkpoint']}", "model_name=tiny-av", "app_name=secure",
        "route_prefix=/secure", f"api_key_file={key}", f"http.port={server['cfg'].http.port}",
        "http.request_timeout_s=0.005"])
    url = serve_job.start(cfg)
    try:
        hello = [{"role": "user", "content": "hi"}]
        wrong = OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0)
        with pytest.raises(AuthenticationError):
            wrong.chat.completions.create(model="tiny-av", max_tokens=2, messages=hello)
        missing = requests.post(url + "/v1/chat/completions",
                                json={"model": "tiny-av", "messages": hello})
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "invalid_api_key"
        assert requests.get(url + "/v1/models").status_code == 401
        assert requests.get(url + "/v1/models", headers={
            "authorization": "Bearer s3cret"}).json()["data"][0]["id"] == "tiny-av"
        assert requests.get(url + "/healthz").status_code == 200
        r = requests.post(url + "/v1/chat/completions",
                          headers={"authorization": "Bearer s3cret"},
                          json={"model": "tiny-av", "max_tokens": 2, "messages": hello})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    finally:
        serve.delete("secure")
    # the first app (no key) is unaffected
    assert _post(server, {"model": "tiny-av", "max_tokens": 2,
                          "messages": [{"role": "user", "content": "hi"}]}).status_code == 200


def test_registered_model_and_s3_media(trained_tiny, synth_features, server, mlflow_server,
                                       s3_server, tmp_path):
    """checkpoint=models:/NAME/VERSION from a real MLflow server, the clip on an
    S3-compatible server as an s3:// video_url (enabled for this app only)."""
    import boto3
    from openai import OpenAI
    from ray import serve

    from pipelines.tracking import Tracker

    uri = Tracker(mlflow_server, str(tmp_path), "serve-registry").finish(
        trained_tiny["checkpoint"], "tiny-serve")
    assert uri == "models:/tiny-serve/1"
    clip = _clips(synth_features, trained_tiny)[2]
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="serve-media")
    s3.upload_file(clip["uri"][len("file://"):], "serve-media", "clips/c.mp4")
    cfg = load_config(ServeConfig, CPU, [
        f"checkpoint={uri}", f"tracking_uri={mlflow_server}", "app_name=registry",
        "route_prefix=/registry", "media.allow_s3=true", f"http.port={server['cfg'].http.port}"])
    url = serve_job.start(cfg)
    try:
        c = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        assert [m.id for m in c.models.list().data] == ["tiny-serve/1"]
        r = c.chat.completions.create(model="tiny-serve/1", temperature=0, max_tokens=8,
                                      messages=_video_msg("s3://serve-media/clips/c.mp4",
                                                          clip["question"]))
        assert r.choices[0].message.content == clip["answer"]
        missing = _post({"url": url}, {"model": "tiny-serve/1", "messages": _video_msg(
            "s3://serve-media/clips/nope.mp4", "?")})
        assert missing.status_code == 400
        assert missing.json()["error"]["code"] == "media_not_found"
    finally:
        serve.delete("registry")


def test_direct_ingress_mode_serves_the_same_api(trained_tiny, synth_features, tmp_path):
    """`python -m pipelines.serve ... http.direct_port=P` as users run it: its own Ray with
    Serve's throughput-optimized mode; the ingress replica answers on P itself (no proxy
    hop), with the same answers, streaming and 4xx errors."""
    import signal
    import subprocess
    import sys
    import time

    from openai import OpenAI

    proxy = free_port()
    direct = serve_job.free_direct_port(proxy)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(ROOT))
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.serve", "--config", CPU,
             f"checkpoint={trained_tiny['checkpoint']}", "model_name=tiny-av",
             f"media.allowed_root={synth_features['root']}", f"http.port={proxy}",
             f"http.direct_port={direct}", "ray.num_cpus=2"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{direct}"
    try:
        deadline = time.monotonic() + 240
        while "serving tiny-av at" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        assert f"serving tiny-av at {url}/v1" in log.read_text()
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        clips = _clips(synth_features, trained_tiny)
        kw = dict(model="tiny-av", temperature=0, max_tokens=8,
                  messages=_video_msg(clips[0]["uri"], clips[0]["question"]))
        assert client.chat.completions.create(**kw).choices[0].message.content == \
            clips[0]["answer"]
        chunks = list(client.chat.completions.create(stream=True, **kw))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
            clips[0]["answer"]
        refused = _post({"url": url}, {"model": "tiny-av", "messages": _video_msg(
            "file:///etc/passwd", "?")})
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "url_not_allowed"
        assert _post({"url": url}, None, b'{"model": ').status_code == 400
        text = client.chat.completions.create(model="tiny-av", max_tokens=3, messages=[
            {"role": "user", "content": "still there?"}])
        assert text.usage.completion_tokens > 0
        # the proxy stays up as a fallback route to the same app
        assert requests.get(f"http://127.0.0.1:{proxy}/healthz").json()["model"] == "tiny-av"
        # Ctrl-C stops it without waiting out Ray's 30 s ingress drain (no load balancer)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(25) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
