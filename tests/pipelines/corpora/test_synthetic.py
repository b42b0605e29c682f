"""The synthetic corpus: deterministic plans, real H.264/AAC mp4s, and media that agree with
the annotations (decoded independently with decord, as the pipeline's decode stage does)."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess

import decord
import numpy as np
import pytest

from av_model.configlib import ConfigError, load_config
from pipelines.corpora import synthetic as synth
from pipelines.corpora import synthetic_render as render
from pipelines.corpora.base import read_manifest

SR = 16000  # decode rate used by the pipeline (and here)


# ----------------------------------------------------------------------------- helpers


def probe(path: str) -> str:
    """ffmpeg's stream description of ``path`` (stderr of ``ffmpeg -i``)."""
    proc = subprocess.run([render.ffmpeg_exe(), "-hide_banner", "-i", path],
                          capture_output=True, text=True)
    return proc.stderr


def container_duration(info: str) -> float:
    h, m, s = re.search(r"Duration: (\d+):(\d+):([\d.]+)", info).groups()
    return int(h) * 3600 + int(m) * 60 + float(s)


def decode_audio(path: str, duration: float) -> np.ndarray:
    """(samples,) 16 kHz mono, trimmed to the container duration (AAC pads the end)."""
    x = decord.AudioReader(path, sample_rate=SR, mono=True)._array.reshape(-1)
    return x[: int(round(duration * SR))]


def band_envelope(x: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """(times, energy) of the lo..hi Hz band, 20 ms Hann frames every 10 ms."""
    win, hop = 320, 160
    n = (len(x) - win) // hop
    frames = np.stack([x[j * hop:j * hop + win] for j in range(n)]) * np.hanning(win)
    spec = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (n, win // 2 + 1)
    freqs = np.fft.rfftfreq(win, 1 / SR)
    return np.arange(n) * hop / SR, spec[:, (freqs >= lo) & (freqs <= hi)].sum(axis=1)


def shape_at(plan: dict, t: float) -> dict | None:
    hits = [s for s in plan["shapes"] if s["t_on"] <= t < s["t_off"]]
    assert len(hits) <= 1, "shapes overlap in time"
    return hits[0] if hits else None


def nearest_colour(rgb: np.ndarray) -> str:
    return min(synth.COLOURS, key=lambda c: float(np.sum((np.array(synth.COLOURS[c]) - rgb) ** 2)))


def plans(cfg: synth.SynthConfig, n: int) -> list[dict]:
    return [synth.plan_clip(cfg, i) for i in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[synth.SynthConfig, list[dict]]:
    """Four default-sized clips (8–12 s, 44.1 kHz stereo) with ≥ 2 shapes and ≥ 2 beeps."""
    cfg = synth.SynthConfig(n=4, seed=7, min_shapes=2, min_beeps=2, speech=False)
    rows = synth.generate(cfg, str(tmp_path_factory.mktemp("synth")))
    return cfg, rows


# ----------------------------------------------------------------------------- plans


def test_plan_is_deterministic_and_independent_of_n():
    a = synth.SynthConfig(n=10, seed=3)
    assert synth.plan_clip(a, 5) == synth.plan_clip(a, 5)
    assert synth.plan_clip(a, 5) == synth.plan_clip(synth.SynthConfig(n=1000, seed=3), 5)
    other = synth.SynthConfig(n=10, seed=4)
    assert [p["caption"] for p in plans(a, 10)] != [p["caption"] for p in plans(other, 10)]
    assert synth.plan_clip(a, 5) != synth.plan_clip(other, 5)


@pytest.mark.parametrize("k", [2, 3])
def test_first_beep_falls_on_each_shape_equally_often(k):
    """No order shortcut for the sync question: with every onset drawn uniformly, 82% of
    first beeps fell on the first of two shapes."""
    cfg = synth.SynthConfig(n=600, seed=5, min_shapes=k, max_shapes=k, min_beeps=1,
                            max_beeps=3)
    hosts = [next(j for j, s in enumerate(p["shapes"]) if s["t_on"] <= p["beeps"][0] < s["t_off"])
             for p in plans(cfg, cfg.n) if p["beeps"]]
    shares = np.bincount(hosts, minlength=k) / len(hosts)
    assert len(hosts) > 500 and np.all(np.abs(shares - 1 / k) < 0.06), shares


def test_plan_timeline_invariants():
    cfg = synth.SynthConfig(n=300, seed=1)
    for p in plans(cfg, cfg.n):
        d = p["duration_s"]
        assert cfg.min_duration_s <= d <= cfg.max_duration_s and p["n_frames"] == round(d * cfg.fps)
        shapes = p["shapes"]
        assert 1 <= len(shapes) <= 3
        assert len({s["colour"] for s in shapes}) == len({s["kind"] for s in shapes}) == len(shapes)
        slot = (d - 0.6) / len(shapes)
        half = p["size_px"] / 2
        assert abs(p["size_px"] - 0.35 * 96) <= 1
        for j, s in enumerate(shapes):
            a, b = 0.3 + j * slot, 0.3 + (j + 1) * slot
            assert a - 1e-3 <= s["t_on"] <= a + slot / 4 + 1e-3  # covers the middle half
            assert b - slot / 4 - 1e-3 <= s["t_off"] <= b + 1e-3
            for x, y in (s["start"], s["end"]):
                assert half - 0.01 <= x <= 96 - half + 0.01 and half - 0.01 <= y <= 96 - half + 0.01
        tone = p["tone"]
        assert tone["t_off"] - tone["t_on"] >= 1.5 - 1e-3 and 0 <= tone["t_on"] and tone["t_off"] <= d
        assert tone["hz"] in synth.TONE_HZ[tone["class"]]
        beeps = p["beeps"]
        assert 1 <= len(beeps) <= 3 and beeps == sorted(beeps)
        assert all(b2 - b1 >= 0.15 + 0.5 - 1e-6 for b1, b2 in zip(beeps, beeps[1:]))
        for t in beeps:
            s = shape_at(p, t)
            assert s is not None and t - s["t_on"] >= 0.5 - 1e-6 and s["t_off"] - (t + 0.15) >= 0.5 - 1e-6
        if p["speech"]:
            sp = p["speech"]
            assert sp["word"] in synth.WORDS and sp["t_off"] <= d
            assert all(sp["t_off"] <= t or sp["t_on"] >= t + 0.15 for t in beeps)
        assert p["split"] in cfg.split_fractions


def test_split_fractions_are_respected():
    cfg = synth.SynthConfig(n=1000, seed=0, split_fractions={"train": 0.7, "test": 0.3})
    splits = [p["split"] for p in plans(cfg, 1000)]
    assert set(splits) == {"train", "test"}
    assert abs(splits.count("test") / 1000 - 0.3) < 0.05


def check_qa(p: dict) -> None:
    """Every answer must follow from the timeline alone (independent of the generator's code)."""
    by_task = {}
    for item in p["qa"]:
        by_task.setdefault(item["task"], []).append(item)
        q, a = item["question"], item["answer"]
        if item["task"] == "vision":
            kind = re.fullmatch(r"What colour is the (\w+)\?", q)
            colour = re.fullmatch(r"What shape is the (\w+) object\?", q)
            assert kind or colour
            match = [s for s in p["shapes"] if (kind and s["kind"] == kind[1]) or
                     (colour and s["colour"] == colour[1])]
            assert len(match) == 1 and a == (match[0]["colour"] if kind else match[0]["kind"])
        elif item["task"] == "audio":
            assert p["has_audio"]
            expect = (p["tone"]["class"] if "tone" in q
                      else ["zero", "one", "two", "three"][len(p["beeps"])])
            assert a == expect
        elif item["task"] == "sync":
            assert a == shape_at(p, p["beeps"][0])["colour"]
        elif item["task"] == "order":
            named = re.fullmatch(r"Which appeared first, the (\w+) (\w+) or the (\w+) (\w+)\?", q)
            mentioned = [s for s in p["shapes"] if s["colour"] in (named[1], named[3])]
            first = min(mentioned, key=lambda s: s["t_on"])
            assert len(mentioned) == 2 and a == f"the {first['colour']} {first['kind']}"
        elif item["task"] == "speech":
            assert a == p["speech"]["word"]
    applies = {"vision", "audio", "sync", "order", "speech"}
    if not p["has_audio"]:
        applies -= {"audio", "sync", "speech"}
    if len(p["shapes"]) < 2:
        applies.discard("order")
    if not p["speech"]:
        applies.discard("speech")
    assert set(by_task) == applies and all(len(v) == 1 for v in by_task.values())


def test_qa_answers_follow_from_the_timeline():
    cfg = synth.SynthConfig(n=200, seed=5, no_audio_fraction=0.3)
    ps = plans(cfg, cfg.n)
    assert any(not p["has_audio"] for p in ps) and any(len(p["shapes"]) == 3 for p in ps)
    for p in ps:
        check_qa(p)
        conv = synth.conversation(p)
        token = "<AUD_VIS>\n" if p["has_audio"] else "<VIS>\n"
        assert conv[0]["role"] == "user" and conv[0]["content"] == token + p["qa"][0]["question"]
        assert [t["content"] for t in conv[1::2]] == [q["answer"] for q in p["qa"]]


def test_qa_per_clip_and_task_mix():
    cfg = synth.SynthConfig(n=50, seed=2, min_shapes=3, qa_per_clip=3,
                            task_mix={"vision": 1.0, "order": 3.0, "audio": 0.0})
    for p in plans(cfg, cfg.n):
        tasks = [q["task"] for q in p["qa"]]
        assert len(tasks) == 3 and set(tasks) <= {"vision", "order"}
        assert len({q["question"] for q in p["qa"]}) == 3


@pytest.mark.parametrize("override, field", [
    ("min_duration_s=13", "min_duration_s"),
    ("no_audio_fraction=1.5", "no_audio_fraction"),
    ("task_mix.colour=1.0", "task_mix.colour"),
    ("width=95", "width"),
    ("max_shapes=4", "max_shapes"),
    ("split_fractions.train=0.5", "split_fractions"),
])
def test_bad_config_names_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(synth.SynthConfig, None, [override])
    assert err.value.field == field
    with pytest.raises(ConfigError, match="min_duration_s"):
        synth.SynthConfig(min_duration_s=10.0, max_duration_s=9.0)


# ----------------------------------------------------------------------------- media


def test_manifest_and_media_are_deterministic(tmp_path):
    cfg = synth.SynthConfig(n=2, seed=9, min_duration_s=5.5, max_duration_s=6.0, max_shapes=2)
    rows_a = synth.generate(cfg, str(tmp_path / "a"))
    rows_b = synth.generate(cfg, str(tmp_path / "b"))
    strip = [{k: v for k, v in r.items() if k != "uri"} for r in rows_a]
    assert strip == [{k: v for k, v in r.items() if k != "uri"} for r in rows_b]
    assert read_manifest(str(tmp_path / "a" / "manifest.jsonl")) == rows_a
    for ra, rb in zip(rows_a, rows_b):
        assert ra["uri"] == str(tmp_path / "a" / "media" / f"{ra['clip_id']}.mp4")
        assert open(ra["uri"], "rb").read() == open(rb["uri"], "rb").read()
    mtime = os.path.getmtime(rows_a[0]["uri"])
    assert synth.generate(cfg, str(tmp_path / "a")) == rows_a  # rerun: nothing re-rendered
    assert os.path.getmtime(rows_a[0]["uri"]) == mtime
    other = synth.SynthConfig(n=2, seed=10, min_duration_s=5.5, max_duration_s=6.0, max_shapes=2)
    assert [synth.plan_clip(other, i)["caption"] for i in range(2)] != [r["caption"] for r in rows_a]


def test_mp4_has_h264_and_aac_with_right_duration_and_size(corpus):
    cfg, rows = corpus
    for row in rows:
        info = probe(row["uri"])
        assert re.search(r"Video: h264.*yuv420p.*96x96", info), info
        assert re.search(r"Audio: aac.*44100 Hz, stereo", info), info
        assert abs(container_duration(info) - row["end_s"]) <= 0.1
        vr = decord.VideoReader(row["uri"])
        assert vr.get_batch([0]).asnumpy().shape == (1, 96, 96, 3)
        assert vr.get_batch([0]).shape[0] == 1
        assert abs(len(vr) / cfg.fps - row["end_s"]) <= 0.1


def test_frames_show_the_annotated_shapes(corpus):
    cfg, rows = corpus
    for row in rows:
        plan = json.loads(row["meta"])
        vr = decord.VideoReader(row["uri"])
        before = int(plan["shapes"][0]["t_on"] * cfg.fps) - 1
        assert before >= 0 and vr.get_batch([before]).asnumpy().max() < 40  # black before
        for s in plan["shapes"]:
            first, last = math.ceil(s["t_on"] * cfg.fps) + 1, math.ceil(s["t_off"] * cfg.fps) - 2
            idx = sorted({first, (first + last) // 2, last})
            frames = vr.get_batch(idx).asnumpy().astype(np.float64)  # (len(idx), H, W, 3)
            for i, frame in zip(idx, frames):
                bright = frame.max(axis=2) > 128
                assert bright.sum() > 100, (row["clip_id"], i)
                assert nearest_colour(frame[bright].mean(axis=0)) == s["colour"]
                a = (i / cfg.fps - s["t_on"]) / (s["t_off"] - s["t_on"])
                cx = s["start"][0] + a * (s["end"][0] - s["start"][0])
                cy = s["start"][1] + a * (s["end"][1] - s["start"][1])
                ys, xs = np.nonzero(bright)
                assert abs((xs.min() + xs.max() + 1) / 2 - cx) <= 2.5
                assert abs((ys.min() + ys.max() + 1) / 2 - cy) <= 2.5


def test_audio_has_the_annotated_tone_and_beeps(corpus):
    _, rows = corpus
    for row in rows:
        plan = json.loads(row["meta"])
        x = decode_audio(row["uri"], row["end_s"])
        assert abs(len(x) / SR - row["end_s"]) <= 0.05
        tone = plan["tone"]
        seg = x[int((tone["t_on"] + 0.05) * SR): int((tone["t_off"] - 0.05) * SR)]
        spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), n=4 * SR))
        freqs = np.fft.rfftfreq(4 * SR, 1 / SR)
        keep = (freqs > 100) & (freqs < 2000)
        assert abs(freqs[keep][np.argmax(spec[keep])] - tone["hz"]) <= 3
        times, band = band_envelope(x, 2300, 2700)
        peak = band.max()
        for b in plan["beeps"]:
            inside = (times >= b + 0.02) & (times <= b + 0.11)
            assert band[inside].mean() > 0.3 * peak
        far = np.all([np.abs(times - (b + 0.075)) > 0.3 for b in plan["beeps"]], axis=0)
        assert band[far].max() < 0.02 * peak
        on = band > 0.5 * peak
        onsets = times[1:][on[1:] & ~on[:-1]]
        assert len(onsets) == len(plan["beeps"])
        assert np.all(np.abs(onsets - np.array(plan["beeps"])) <= 0.03)


def test_clip_without_audio_track(tmp_path):
    cfg = synth.SynthConfig(n=1, seed=0, min_duration_s=5.5, max_duration_s=6.0,
                            max_shapes=2, no_audio_fraction=1.0)
    [row] = synth.generate(cfg, str(tmp_path))
    info = probe(row["uri"])
    assert "Video: h264" in info and "Audio:" not in info
    plan = json.loads(row["meta"])
    assert not plan["has_audio"] and plan["tone"] is None and plan["beeps"] == []
    assert {q["task"] for q in plan["qa"]} <= {"vision", "order"}
    assert row["conversations"][0]["content"].startswith("<VIS>\n")
    assert "No sound." in row["caption"]


def test_spoken_word(tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed: clips carry no speech")
    cfg = synth.SynthConfig(n=1, seed=4, min_duration_s=5.5, max_duration_s=6.0, max_shapes=2)
    [row] = synth.generate(cfg, str(tmp_path))
    plan = json.loads(row["meta"])
    sp = plan["speech"]
    assert sp and {"task": "speech", "question": "What word was spoken?",
                   "answer": sp["word"]} in plan["qa"]
    x = decode_audio(row["uri"], row["end_s"])
    # energy away from the tone's pitch and below the beeps: speech only
    times, band = band_envelope(x, 150, 2000)
    _, tone_band = band_envelope(x, plan["tone"]["hz"] - 150, plan["tone"]["hz"] + 150)
    voice = band - tone_band
    in_word = (times >= sp["t_on"]) & (times <= sp["t_off"])
    quiet = ~in_word & np.all([np.abs(times - b) > 0.3 for b in plan["beeps"]], axis=0)
    quiet &= np.abs(times - sp["t_on"]) > 1.0
    for edge in (plan["tone"]["t_on"], plan["tone"]["t_off"]):  # a tone's fades are broadband
        quiet &= np.abs(times - edge) > 0.1
    assert voice[in_word].max() > 100 * max(voice[quiet].max(), 1e-9)


def test_cli_writes_manifest(tmp_path, caplog):
    out = tmp_path / "cli"
    with caplog.at_level(logging.INFO):
        synth.main(["--out", str(out), "--n", "1", "--seed", "2", "min_duration_s=6",
                    "max_duration_s=6", "max_shapes=2", "speech=false", "stereo=false"])
    [row] = read_manifest(str(out / "manifest.jsonl"))
    assert row["clip_id"] == "synth_00000" and row["end_s"] == 6.0 and os.path.isfile(row["uri"])
    assert "mono" in probe(row["uri"])
    assert "1 clips" in caplog.text and "manifest.jsonl" in caplog.text
