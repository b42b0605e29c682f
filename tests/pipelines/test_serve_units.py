"""Serving pieces without Ray: request → conversation, the media policy, streamed text,
token accounting of generation, the in-process predictor on a saved checkpoint, what the
config-only replicas fetch, and the ingress's HTTP layer (errors, body cap) over uvicorn."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
from typing import Iterator

import numpy as np
import pytest
import torch

from av_model import checkpoint
from av_model.model import AVModel, GenerateOptions, Sample
from pipelines.serve_api import ApiError, ChatCompletionRequest, MediaPart, to_conversation
from pipelines.serve_config import MediaPolicy, ServeConfig
from pipelines.serve_media import MediaResolver
from pipelines.serve_predictor import AVPredictor, StreamText
from pipelines.media import DecodeConfig
from tests.av_model.model_helpers import features, tiny_config
from tests.conftest import ROOT
from tests.media_factory import make_video


def _req(messages, **kw) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": messages, **kw})


def test_media_part_becomes_the_training_prompt_shape():
    conv = to_conversation(_req([
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "video_url", "video_url": {"url": "file:///v.mp4"}},
                                     {"type": "text", "text": "What moves?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a ball"}]},
        {"role": "user", "content": [{"type": "input_audio",
                                      "input_audio": {"data": "AAAA", "format": "WAV"}},
                                     {"type": "text", "text": "And this?"}]}]))
    assert conv.turns == [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "<AUD_VIS>\nWhat moves?"},
                          {"role": "assistant", "content": "a ball"},
                          {"role": "user", "content": "And this?"}]
    assert conv.visual == MediaPart("video", "file:///v.mp4",
                                    "messages[1].content[0].video_url.url")
    assert conv.audio.url == "data:audio/wav;base64,AAAA"


@pytest.mark.parametrize("messages, param", [
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x"}},
                                   {"type": "video_url", "video_url": {"url": "data:y"}}]}],
     "messages[0].content[1]"),
    ([{"role": "assistant", "content": [{"type": "audio_url", "audio_url": {"url": "data:x"}}]},
      {"role": "user", "content": "?"}], "messages[0].content[0]"),
    ([{"role": "user", "content": "look at <AUD>"}], "messages[0].content"),
    ([{"role": "user", "content": [{"type": "video_url"}]}], "messages[0].content[0]"),
])
def test_conversation_refusals_name_the_field(messages, param):
    with pytest.raises(ApiError) as err:
        to_conversation(_req(messages))
    assert err.value.status == 400 and err.value.param == param


@pytest.fixture()
def resolver(tmp_path) -> MediaResolver:
    root = tmp_path / "root"
    root.mkdir()
    return MediaResolver(MediaPolicy(allowed_root=str(root), max_data_bytes=1000,
                                     max_video_s=5), DecodeConfig(fps=2, frame_size=32))


def test_file_urls_stay_inside_the_root(resolver, tmp_path):
    root = tmp_path / "root"
    inside = make_video(root / "a.mp4", 2.0)
    outside = make_video(tmp_path / "b.mp4", 2.0)
    (root / "link.mp4").symlink_to(outside)
    (root / "sub").mkdir()
    ok = resolver.decode(MediaPart("video", f"file://{inside}", "p"))
    assert ok.frames.shape == (4, 32, 32, 3) and ok.audio.shape == (32000,)
    for url in (f"file://{outside}", f"file://{root}/link.mp4", f"file://{root}/sub/../../b.mp4",
                f"file://otherhost{inside}"):
        with pytest.raises(ApiError) as err:
            resolver.decode(MediaPart("video", url, "p"))
        assert err.value.code == "url_not_allowed", url


def test_cache_key_follows_content(resolver, tmp_path):
    path = make_video(tmp_path / "root" / "a.mp4", 2.0)
    part = MediaPart("video", f"file://{path}", "p")
    key = resolver.cache_key(part)
    assert resolver.cache_key(part) == key
    make_video(path, 3.0)  # replaced in place
    assert resolver.cache_key(part) != key
    data = MediaPart("audio", "data:audio/wav;base64,AAAA", "p")
    assert resolver.cache_key(data) == resolver.cache_key(MediaPart("audio", data.url, "q"))


def test_limits_and_images(resolver, tmp_path):
    from PIL import Image

    big = MediaPart("video", "data:video/mp4;base64," + "A" * 2000, "p")
    with pytest.raises(ApiError, match="over 1000 bytes"):
        resolver.decode(big)
    longer = make_video(tmp_path / "root" / "long.mp4", 7.0)
    with pytest.raises(ApiError) as err:
        resolver.decode(MediaPart("video", f"file://{longer}", "p"))
    assert err.value.code == "media_too_long"
    png = io.BytesIO()
    Image.fromarray(np.zeros((10, 30, 3), np.uint8)).save(png, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    assert resolver.decode(MediaPart("image", url, "p")).frames.shape == (1, 32, 32, 3)
    with pytest.raises(ApiError) as err:
        resolver.decode(MediaPart("image", "data:image/png;base64,AAAA", "p"))
    assert err.value.code == "corrupt_or_unsupported"


def test_stream_text_never_sends_a_stop_string_and_sums_to_the_answer():
    s = StreamText(("STOP", "##"))
    pieces = ["  Hel", "lo ", "wor", "ld S", "TO", "P and more"]
    deltas = [s.feed(p) for p in pieces]
    assert "".join(deltas) == "Hello world"
    assert not any("S" in d for d in deltas[:4])
    plain = StreamText(())
    out = "".join(plain.feed(p) for p in [" a", " b ", " "]) + plain.finish("a b")
    assert out == "a b"


def test_generate_full_counts_tokens_and_reports_why_it_stopped(tiny_encoders):
    torch.manual_seed(0)
    model = AVModel.build(tiny_config(tiny_encoders), load_encoders=False).eval()
    prompt = [Sample([{"role": "user", "content": "Hello?"}])]
    (g,) = model.generate_full(prompt, GenerateOptions(max_new_tokens=3))
    assert g.completion_tokens <= 3 and g.prompt_tokens == len(
        model.collate(prompt, generation=True)["input_ids"][0])
    assert g.finish_reason == ("length" if g.completion_tokens == 3 else "stop")
    assert g.text == model.generate(prompt, GenerateOptions(max_new_tokens=3))[0]


def test_predictor_in_process(tiny_encoders, tmp_path):
    """The chain the deployments split up, in one process: a raw mp4 in, OpenAI JSON out."""
    torch.manual_seed(0)
    model = AVModel.build(tiny_config(tiny_encoders, mode="full"), load_encoders=False)
    ckpt = checkpoint.save(model, tmp_path / "ckpt")
    media = tmp_path / "media"
    media.mkdir()
    clip = make_video(media / "a.mp4", 2.0)
    cfg = ServeConfig(checkpoint=str(ckpt), media=MediaPolicy(allowed_root=str(media)))
    pred = AVPredictor(cfg)
    body = {"model": "ckpt", "max_tokens": 3, "temperature": 0, "messages": [
        {"role": "user", "content": [{"type": "video_url", "video_url": {"url": f"file://{clip}"}},
                                     {"type": "text", "text": "What is it?"}]}]}
    first, second = pred.chat([body, body])
    assert first["choices"][0]["message"] == second["choices"][0]["message"]
    assert first["usage"]["prompt_tokens"] > 20  # media positions counted
    assert pred.encoder.stats() == {"hits": 1, "misses": 1, "items": 1}
    assert os.path.isfile(clip)


def test_lora_checkpoint_served_merged_answers_as_unmerged(tiny_encoders, tmp_path):
    """merge_lora folds the adapters into the base at load: no LoRA layers remain, and the
    greedy answers and their scores are those of the unmerged model."""
    from peft import PeftModel

    from pipelines.serve_predictor import ChatGenerator, GenRequest

    torch.manual_seed(0)
    model = AVModel.build(tiny_config(tiny_encoders, mode="lora"), load_encoders=False)
    with torch.no_grad():  # trained-looking adapters: lora_B starts at zero (a no-op)
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ckpt = checkpoint.save(model, tmp_path / "ckpt")
    gens = {merge: ChatGenerator(ServeConfig(checkpoint=str(ckpt), merge_lora=merge))
            for merge in (True, False)}
    assert isinstance(gens[False].model.llm, PeftModel)
    assert not isinstance(gens[True].model.llm, PeftModel)
    assert not any("lora_" in n for n, _ in gens[True].model.llm.named_modules())
    video, audio = features()
    req = GenRequest(turns=[{"role": "user", "content": "<AUD_VIS>\nWhat is it?"}],
                     video=video, audio=audio, image=False,
                     options=GenerateOptions(max_new_tokens=6))
    merged, unmerged = (gens[m].generate([req])[0] for m in (True, False))
    assert (merged.text, merged.completion_tokens) == (unmerged.text, unmerged.completion_tokens)
    with gens[False].model.llm.disable_adapter():  # the adapters do change the answer
        assert gens[False].generate([req])[0].text != unmerged.text


@pytest.mark.parametrize("override, field", [
    ("checkpoint=/nonexistent/ckpt", "checkpoint"),
    ("deployments.generator.autoscaling.max_replicass=3", "deployments.generator.autoscaling"),
    ("media.allowed_root=/nonexistent/media", "media.allowed_root"),
    ("http.port=70000", "http.port"),
    ("http.direct_port=7990", "http.direct_port"),   # its 64 ports hold the proxy's 8000
])
def test_bad_serve_config_fails_before_ray_naming_the_field(override, field, tmp_path, capsys):
    from pipelines import serve

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "avray.yaml").write_text("{}")
    args = ["--config", str(ROOT / "pipelines" / "configs" / "serve" / "cpu.yaml"),
            f"checkpoint={ckpt}", override]
    with pytest.raises(SystemExit) as exit_:
        serve.main(args)
    assert exit_.value.code == 2 and f"'{field}'" in capsys.readouterr().err


def test_playlists_and_odd_urls_never_reach_the_decoder(resolver, tmp_path):
    """An HLS playlist as a data: payload would make ffmpeg open the files it names."""
    outside = make_video(tmp_path / "secret.mp4", 2.0)
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{outside}\n#EXT-X-ENDLIST\n"
    url = "data:audio/x-mpegurl;base64," + base64.b64encode(playlist.encode()).decode()
    with pytest.raises(ApiError) as err:
        resolver.decode(MediaPart("audio", url, "p"))
    assert err.value.code == "corrupt_or_unsupported"
    for bad in ("file:///root/a%00.mp4", "file:///root/\ud800.mp4"):
        with pytest.raises(ApiError) as err:
            resolver.decode(MediaPart("video", bad, "p"))
        assert err.value.code == "bad_url"


def test_stream_text_holds_back_for_a_longer_stop_string():
    s = StreamText(("lo", "hello w"))
    assert "".join(s.feed(p) for p in ["xhel", "lo", " w"]) == "x"


def test_tiny_temperatures_are_greedy_and_long_stops_refused():
    from pipelines.serve_config import GenerationDefaults
    from pipelines.serve_predictor import generate_options

    hello = [{"role": "user", "content": "hi"}]
    opts = generate_options(_req(hello, temperature=1e-320), GenerationDefaults())
    assert not opts.do_sample
    with pytest.raises(ApiError) as err:
        generate_options(_req(hello, stop=["a" * 5000]), GenerationDefaults())
    assert err.value.param == "stop"


def test_a_failing_request_does_not_fail_its_batch(tiny_encoders):
    from pipelines.serve_predictor import ChatGenerator, GenRequest

    torch.manual_seed(0)
    model = AVModel.build(tiny_config(tiny_encoders), load_encoders=False).eval()
    gen = ChatGenerator(ServeConfig(checkpoint="unused"), model=model)
    opts = GenerateOptions(max_new_tokens=2)
    good = GenRequest([{"role": "user", "content": "hi"}], None, None, False, opts)
    dims = model.cfg.dims
    broken = GenRequest([{"role": "user", "content": "hi"}],
                        torch.zeros(2, dims.video_tokens, dims.video_dim + 3), None, False, opts)
    out = gen.generate([good, broken, good])
    assert isinstance(out[1], ApiError) and out[1].status == 500
    assert out[0].text == out[2].text and not isinstance(out[0], ApiError)


def _unfetchable_llm_checkpoint(where, model_cfg) -> None:
    """A checkpoint directory whose config is real and whose llm/ weights cannot be read."""
    from av_model.configlib import dump_yaml

    (where / "llm").mkdir(parents=True)
    (where / "avray.yaml").write_text(dump_yaml(model_cfg))
    (where / "llm" / "model.safetensors").symlink_to(where / "gone")


@pytest.mark.parametrize("kind", ["local", "s3", "models"])
def test_config_replicas_fetch_only_the_config(kind, tiny_encoders, tmp_path, request):
    """Decoder and Encoder replicas read the model config from the checkpoint without
    fetching its llm/: an llm/ that cannot be fetched (an archived S3 object, a missing
    artifact file) must not matter to them, wherever the checkpoint lives."""
    from pipelines.serve_predictor import media_resolver, model_config

    model_cfg = tiny_config(tiny_encoders, mode="full")
    ckpt = tmp_path / "ckpt"
    tracking_uri = None
    if kind == "local":
        _unfetchable_llm_checkpoint(ckpt, model_cfg)
        ref = str(ckpt)
    elif kind == "s3":
        import boto3

        request.getfixturevalue("s3_server")
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="serve-config-ckpt")
        _unfetchable_llm_checkpoint(ckpt, model_cfg)
        s3.upload_file(str(ckpt / "avray.yaml"), "serve-config-ckpt", "run/model/avray.yaml")
        s3.put_object(Bucket="serve-config-ckpt", Key="run/model/llm/model.safetensors",
                      Body=b"\0" * 64, StorageClass="GLACIER")   # GET: InvalidObjectState
        ref = "s3://serve-config-ckpt/run/model"
    else:
        from pipelines.tracking import Tracker

        tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        _unfetchable_llm_checkpoint(ckpt, model_cfg)
        (ckpt / "llm" / "model.safetensors").unlink()
        (ckpt / "llm" / "model.safetensors").write_bytes(b"\0" * 64)
        tracker = Tracker(tracking_uri, str(tmp_path), "serve-config")
        ref = tracker.finish(str(ckpt), "serve-config")
        (stored,) = (tmp_path / "mlartifacts").rglob("model.safetensors")
        stored.unlink()
        stored.symlink_to(tmp_path / "gone")   # the artifact store lost the weights
        runs_ref = ServeConfig(checkpoint=f"runs:/{tracker.run_id}/model",
                               tracking_uri=tracking_uri)
        assert model_config(runs_ref) == model_cfg
    cfg = ServeConfig(checkpoint=ref, tracking_uri=tracking_uri)
    assert model_config(cfg) == model_cfg
    assert media_resolver(cfg, model_config(cfg)).decode_cfg.fps == model_cfg.encoders.fps


@contextlib.contextmanager
def _http(app) -> Iterator[str]:
    """``app`` served by uvicorn (the server Ray Serve runs) on a loopback port."""
    import threading
    import time

    import uvicorn

    from pipelines.jobs import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _ingress_like_app(body_limit: int):
    """A FastAPI app with the ingress's HTTP layer (serve_http.install) and routes that
    answer, refuse, and fail the way the ingress's can."""
    from fastapi import FastAPI

    from pipelines import serve_http

    app = FastAPI()
    serve_http.install(app, lambda: body_limit)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest) -> dict:
        if body.model != "m":
            raise ApiError(404, "no such model", param="model", code="model_not_found")
        return {"messages": len(body.messages)}

    @app.get("/v1/models")
    async def models() -> dict:   # what an encoder raising, or a dead replica, looks like
        raise RuntimeError("Traceback (most recent call last):\n  File \"/srv/secret.py\"")

    return app


def _error(r, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json", r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], err
    assert err["type"] == ("server_error" if status >= 500 else "invalid_request_error"), err
    return err


def test_every_http_failure_is_an_openai_error():
    import requests

    hello = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with _http(_ingress_like_app(body_limit=10_000)) as url:
        chat = url + "/v1/chat/completions"
        assert _error(requests.get(url + "/v1/nope"), 404)["code"] == "not_found"
        r = requests.get(chat)
        assert _error(r, 405)["code"] == "method_not_allowed" and r.headers["allow"] == "POST"
        err = _error(requests.get(url + "/v1/models"), 500)
        assert "RuntimeError" in err["message"] and "secret" not in err["message"]
        bad_json = requests.post(chat, data=b'{"model": "m", "messages": [',
                                 headers={"content-type": "application/json"})
        err = _error(bad_json, 400)
        assert err["param"] is None and err["code"] == "json_invalid", err
        assert _error(requests.post(chat, json={"model": "m"}), 400)["param"] == "messages"
        assert _error(requests.post(chat, json={**hello, "model": "x"}), 404)["param"] == \
            "model"
        assert requests.post(chat, json=hello).json() == {"messages": 1}  # still serving


def test_request_bodies_over_the_cap_get_413_before_parsing():
    """By Content-Length, and for a chunked upload (no length) while it streams in."""
    import requests

    def padded(n: int) -> bytes:
        return json.dumps({"model": "m", "messages": [{"role": "user",
                                                       "content": "x" * n}]}).encode()

    def chunked(body: bytes) -> Iterator[bytes]:
        yield from (body[i:i + 1000] for i in range(0, len(body), 1000))

    headers = {"content-type": "application/json"}
    with _http(_ingress_like_app(body_limit=10_000)) as url:
        chat = url + "/v1/chat/completions"
        assert requests.post(chat, data=padded(9_000), headers=headers).status_code == 200
        assert requests.post(chat, data=chunked(padded(9_000)), headers=headers).json() == \
            {"messages": 1}
        for body in (padded(10_000), padded(16 << 20)):
            for data in (body, chunked(body)):
                err = _error(requests.post(chat, data=data, headers=headers), 413)
                assert err["code"] == "request_too_large" and "10000 bytes" in err["message"]
        assert requests.post(chat, data=padded(10), headers=headers).status_code == 200


def test_body_cap_defaults_to_room_for_two_data_payloads():
    from av_model.configlib import ConfigError
    from pipelines.serve_config import HttpConfig

    cfg = ServeConfig(checkpoint="c", media=MediaPolicy(max_data_bytes=3 * 1000))
    two_payloads = 2 * len(base64.b64encode(b"\0" * 3000))
    assert two_payloads < cfg.max_body_bytes <= two_payloads + (1 << 20)
    assert ServeConfig(checkpoint="c", http=HttpConfig(max_body_bytes=5)).max_body_bytes == 5
    with pytest.raises(ConfigError, match="max_body_bytes"):
        HttpConfig(max_body_bytes=0)


def test_a_request_past_its_deadline_stops_decoding_alone(tiny_encoders):
    """The client of a late request has had its 504: its row stops at the next token, the
    rest of the batch decodes on unchanged (per-row stopping), streamed or not."""
    import dataclasses
    import time

    from pipelines.serve_predictor import ChatGenerator, GenRequest

    torch.manual_seed(0)
    model = AVModel.build(tiny_config(tiny_encoders), load_encoders=False).eval()
    gen = ChatGenerator(ServeConfig(checkpoint="unused"), model=model)
    free = GenRequest([{"role": "user", "content": "hi"}], None, None, False,
                      GenerateOptions(max_new_tokens=12))
    late = dataclasses.replace(free, deadline=time.time() - 1)
    alone = gen.generate([free])[0]
    assert alone.completion_tokens > 2                    # the random model talks on
    out = gen.generate([free, late, dataclasses.replace(free, deadline=time.time() + 600)])
    assert out[0] == alone and out[2] == alone
    # Cut, not finished: the 504 its client got, never a short answer passing for whole.
    assert isinstance(out[1], ApiError) and (out[1].status, out[1].code) == (504, "timeout")
    *deltas, final = list(gen.stream(late))
    assert isinstance(final, ApiError) and final.status == 504 and len(deltas) <= 1
    # A request that ended on its own before its deadline passed is an answer, not a 504.
    short = dataclasses.replace(free, options=GenerateOptions(max_new_tokens=1))
    (one,) = gen.generate([dataclasses.replace(short, deadline=time.time() + 600)])
    assert one == gen.generate([short])[0]


class _FakeStream:
    """What a streaming DeploymentResponseGenerator gives the ingress: text deltas, then the
    final Generation, each after ``delays[i]`` seconds."""

    def __init__(self, items, delays):
        self.items, self.delays, self.cancelled = list(items), list(delays), False

    async def __anext__(self):
        import asyncio

        if not self.items:
            raise StopAsyncIteration
        await asyncio.sleep(self.delays.pop(0))
        return self.items.pop(0)

    def cancel(self):
        self.cancelled = True


def _events(first, stream, deadline, **kw) -> list:
    import asyncio

    from pipelines.serve_http import chat_events

    async def collect():
        return [e async for e in chat_events(first, stream, "chatcmpl-1", "m", deadline, 9.0,
                                             **kw)]
    events = asyncio.run(collect())
    assert events[-1] == "data: [DONE]\n\n" and all(e.startswith("data: ") for e in events)
    return [json.loads(e[6:]) for e in events[:-1]]


def test_stream_events_end_in_band_at_the_deadline():
    import time

    from av_model.model import Generation

    done = Generation("a b", prompt_tokens=5, completion_tokens=2, finish_reason="stop")
    ok = _FakeStream([" b", done], [0.0, 0.0])
    events = _events("a", ok, time.time() + 60, with_usage=True)
    assert [e["choices"][0]["delta"] for e in events[:3]] == [
        {"role": "assistant", "content": ""}, {"content": "a"}, {"content": " b"}]
    assert events[3]["choices"][0]["finish_reason"] == "stop"
    assert events[4]["usage"]["completion_tokens"] == 2 and not ok.cancelled

    slow = _FakeStream([" b", done], [0.0, 5.0])         # the answer would end after 5 s
    start = time.monotonic()
    events = _events("a", slow, time.time() + 0.5)
    assert time.monotonic() - start < 3
    assert [e["choices"][0]["delta"] for e in events[:3]] == [
        {"role": "assistant", "content": ""}, {"content": "a"}, {"content": " b"}]
    assert events[3]["error"]["code"] == "timeout" and events[3]["error"]["type"] == "timeout_error"
    assert len(events) == 4 and slow.cancelled               # decoding told to stop

    # The generator cut the request itself (its clock ran ahead of the ingress's).
    cut = _FakeStream([" b", ApiError(504, "late", type="timeout_error", code="timeout")],
                      [0.0, 0.0])
    events = _events("a", cut, time.time() + 60)
    assert events[-1]["error"]["code"] == "timeout" and len(events) == 4
    # A TimeoutError of the stream's own before the deadline is a failure, not our timeout.

    class _Failing(_FakeStream):
        async def __anext__(self):
            raise TimeoutError("ray get timed out")

    events = _events("a", _Failing([], []), time.time() + 60)
    assert events[-1]["error"]["code"] == "generation_failed"


def test_s3_urls_stay_under_the_allowed_prefixes(s3_server, tmp_path):
    import boto3

    from av_model.configlib import ConfigError

    s3 = boto3.client("s3")
    clip = make_video(tmp_path / "a.mp4", 2.0).read_bytes()
    for bucket in ("media-ok", "secrets"):
        s3.create_bucket(Bucket=bucket)
    for key in ("media-ok/clips/a.mp4", "media-ok/clipsX/a.mp4", "secrets/a.mp4"):
        bucket, name = key.split("/", 1)
        s3.put_object(Bucket=bucket, Key=name, Body=clip)
    decode = DecodeConfig(fps=2, frame_size=32)
    fenced = MediaResolver(MediaPolicy(allow_s3=True, s3_prefixes=["s3://media-ok/clips/"]),
                           decode)
    ok = fenced.decode(MediaPart("video", "s3://media-ok/clips/a.mp4", "p"))
    assert ok.frames.shape == (4, 32, 32, 3)
    for url, code in (("s3://media-ok/clipsX/a.mp4", "url_not_allowed"),   # a prefix of a name
                      ("s3://secrets/a.mp4", "url_not_allowed"),
                      ("s3://media-ok/clips/../../secrets/a.mp4", "bad_url")):
        for call in (fenced.decode, fenced.cache_key):
            with pytest.raises(ApiError) as err:
                call(MediaPart("video", url, "p"))
            assert (err.value.status, err.value.code) == (400, code), url
    anywhere = MediaResolver(MediaPolicy(allow_s3=True), decode)      # no prefixes: any bucket
    assert anywhere.decode(MediaPart("video", "s3://secrets/a.mp4", "p")).frames.shape[0] == 4
    for bad in (dict(allow_s3=True, s3_prefixes=["media-ok/clips"]),
                dict(allow_s3=False, s3_prefixes=["s3://media-ok/clips/"])):  # no effect
        with pytest.raises(ConfigError) as err:
            MediaPolicy(**bad)
        assert err.value.field == "s3_prefixes"
