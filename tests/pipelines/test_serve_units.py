"""Serving pieces without Ray: request → conversation, the media policy, streamed text,
token accounting of generation, and the in-process predictor on a saved checkpoint."""

from __future__ import annotations

import base64
import io
import os

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
