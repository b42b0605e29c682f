"""Turn a synthetic clip plan (see ``synthetic.plan_clip``) into a real mp4 file.

Why a separate module: the plan is pure data that tests and benchmarks read without touching
ffmpeg; everything here is the media side. A clip is numpy-rendered RGB frames piped into
ffmpeg's stdin plus a temporary WAV (soundfile) as a second input, encoded as H.264
(libx264, yuv420p, short GOP for cheap seeking) and AAC — the same containers real corpora
ship, so the decode stage is exercised for real (resampling to 16 kHz mono included).

The render reads only the plan (rgb values, times, rates), never the config, so a plan is the
complete content spec; its hash is stamped into the mp4 so a rerun can skip finished clips.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from typing import Any, Iterator

import numpy as np
import soundfile as sf

RENDER_VERSION = 1  # bump when the pixels/samples for a given plan change
GOP = 10  # keyframe interval in frames: small so random-access decoding stays cheap
SPEC_TAG = "avray-synth-spec="
TONE_AMP, BEEP_AMP, SPEECH_PEAK = 0.25, 0.35, 0.3  # sum < 1: the mix never clips
TONE_FADE_S, BEEP_FADE_S = 0.01, 0.005
MEDIA_KEYS = ("duration_s", "fps", "width", "height", "size_px", "audio_rate", "channels",
              "has_audio", "shapes", "tone", "beeps", "beep_hz", "beep_s", "speech",
              "noise_level", "noise_seed")


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """The ffmpeg binary imageio-ffmpeg ships (known to have libx264 + aac), else PATH's."""
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return shutil.which("ffmpeg") or "ffmpeg"


def speech_available(wanted: bool) -> bool:
    """Speech needs ``espeak-ng``; without it clips simply carry no spoken word."""
    return bool(wanted) and shutil.which("espeak-ng") is not None


def spec_hash(plan: dict[str, Any]) -> str:
    """Hash of everything that decides the media bytes (not the QA or the split)."""
    spec = {k: plan.get(k) for k in MEDIA_KEYS}
    spec["render_version"] = RENDER_VERSION
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def shape_mask(kind: str, cx: float, cy: float, size: float,
               yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Boolean (H, W) mask of one shape of side/diameter ``size`` centred at (cx, cy)."""
    half = size / 2.0
    if kind == "square":
        return (np.abs(xx - cx) <= half) & (np.abs(yy - cy) <= half)
    if kind == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= half ** 2
    if kind == "triangle":  # apex up; half-width grows linearly from apex to base
        top = cy - half
        return (yy >= top) & (yy <= cy + half) & (np.abs(xx - cx) <= (yy - top) / 2.0)
    raise ValueError(f"unknown shape kind {kind!r}")


def shape_position(shape: dict[str, Any], t: float) -> tuple[float, float]:
    """Centre of ``shape`` at time t: linear motion from ``start`` to ``end`` while visible."""
    span = max(shape["t_off"] - shape["t_on"], 1e-9)
    a = min(max((t - shape["t_on"]) / span, 0.0), 1.0)
    (x0, y0), (x1, y1) = shape["start"], shape["end"]
    return x0 + a * (x1 - x0), y0 + a * (y1 - y0)


def visible_shape(plan: dict[str, Any], t: float) -> dict[str, Any] | None:
    """The shape on screen at time t (slots never overlap, so at most one)."""
    for shape in plan["shapes"]:
        if shape["t_on"] <= t < shape["t_off"]:
            return shape
    return None


def render_frames(plan: dict[str, Any]) -> Iterator[np.ndarray]:
    """Yield every frame, (H, W, 3) uint8, black background and at most one shape."""
    h, w, fps = plan["height"], plan["width"], plan["fps"]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5  # pixel centres, (H, W) each
    for i in range(plan["n_frames"]):
        frame = np.zeros((h, w, 3), np.uint8)
        shape = visible_shape(plan, i / fps)
        if shape is not None:
            cx, cy = shape_position(shape, i / fps)
            frame[shape_mask(shape["kind"], cx, cy, plan["size_px"], yy, xx)] = shape["rgb"]
        yield frame


def _envelope(n: int, fade: int) -> np.ndarray:
    """(n,) gain: linear fade-in and fade-out of ``fade`` samples, so onsets do not click."""
    env = np.ones(n, np.float64)
    fade = max(1, min(fade, n // 2))
    ramp = np.linspace(0.0, 1.0, fade, endpoint=False)
    env[:fade], env[n - fade:] = ramp, ramp[::-1]
    return env


def _add_sine(y: np.ndarray, rate: int, t_on: float, t_off: float, hz: float,
              amp: float, fade_s: float) -> None:
    """Add a faded sine of ``hz`` between t_on and t_off to ``y`` in place."""
    i0, i1 = int(round(t_on * rate)), min(int(round(t_off * rate)), len(y))
    if i1 <= i0:
        return
    t = np.arange(i1 - i0) / rate
    y[i0:i1] += amp * np.sin(2 * np.pi * hz * t) * _envelope(i1 - i0, int(fade_s * rate))


@functools.lru_cache(maxsize=32)
def speech_wave(word: str, rate: int, max_s: float) -> np.ndarray:
    """espeak-ng's rendering of ``word`` at ``rate``, silence-trimmed, ≤ max_s, peak SPEECH_PEAK.

    Trimming leading silence makes the recorded onset the audible onset.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "word.wav")
        subprocess.run(["espeak-ng", "-s", "160", "-w", path, word], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wave, src_rate = sf.read(path, dtype="float64", always_2d=True)
    wave = wave.mean(axis=1)  # (samples,) mono
    loud = np.nonzero(np.abs(wave) > 0.02 * np.abs(wave).max())[0]
    wave = wave[loud[0]:loud[-1] + 1]
    wave = _resample(wave, src_rate, rate)[: int(max_s * rate)]
    wave *= _envelope(len(wave), int(0.005 * rate))
    return (SPEECH_PEAK / np.abs(wave).max() * wave).astype(np.float64)


def _resample(wave: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Polyphase resampling with scipy when importable, else linear interpolation."""
    if src == dst:
        return wave
    try:
        from math import gcd

        from scipy.signal import resample_poly
        g = gcd(src, dst)
        return resample_poly(wave, dst // g, src // g)
    except ImportError:
        n_out = int(round(len(wave) * dst / src))
        return np.interp(np.arange(n_out) * src / dst, np.arange(len(wave)), wave)


def render_audio(plan: dict[str, Any]) -> np.ndarray:
    """The clip's soundtrack, (samples, channels) float32 in [-1, 1]."""
    rate = plan["audio_rate"]
    y = np.zeros(int(round(plan["duration_s"] * rate)), np.float64)  # (samples,)
    tone = plan["tone"]
    if tone:
        _add_sine(y, rate, tone["t_on"], tone["t_off"], tone["hz"], TONE_AMP, TONE_FADE_S)
    for b in plan["beeps"]:
        _add_sine(y, rate, b, b + plan["beep_s"], plan["beep_hz"], BEEP_AMP, BEEP_FADE_S)
    speech = plan["speech"]
    if speech:
        wave = speech_wave(speech["word"], rate, speech["t_off"] - speech["t_on"])
        i0 = int(round(speech["t_on"] * rate))
        seg = y[i0:i0 + len(wave)]
        seg += wave[: len(seg)]
    if plan["noise_level"] > 0:
        y += plan["noise_level"] * np.random.default_rng(plan["noise_seed"]).standard_normal(len(y))
    y = np.clip(y, -0.99, 0.99)
    return np.repeat(y[:, None], plan["channels"], axis=1).astype(np.float32)  # (samples, C)


def _ffmpeg_cmd(plan: dict[str, Any], wav: str | None, out: str) -> list[str]:
    cmd = [ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{plan['width']}x{plan['height']}", "-framerate", str(plan["fps"]),
           "-i", "pipe:0"]
    if wav:
        cmd += ["-i", wav]
    cmd += ["-map", "0:v"] + (["-map", "1:a", "-c:a", "aac", "-b:a", "96k"] if wav else [])
    cmd += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
            "-g", str(GOP), "-threads", "1", "-fflags", "+bitexact",
            "-flags:v", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1",
            "-metadata", f"comment={SPEC_TAG}{spec_hash(plan)}",
            "-movflags", "+faststart", "-f", "mp4", out]
    return cmd


def encode(plan: dict[str, Any], path: str) -> None:
    """Write the clip to ``path`` atomically (temp file + rename): frames via stdin, WAV input."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        wav = None
        if plan["has_audio"]:
            wav = os.path.join(tmp, "audio.wav")
            sf.write(wav, render_audio(plan), plan["audio_rate"], subtype="PCM_16")
        out = os.path.join(tmp, "clip.mp4")
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(_ffmpeg_cmd(plan, wav, out), stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=err)
            assert proc.stdin is not None
            try:
                for frame in render_frames(plan):
                    proc.stdin.write(frame.tobytes())
            except BrokenPipeError:
                pass  # ffmpeg died: its stderr below says why
            proc.stdin.close()
            if proc.wait() != 0:
                err.seek(0)
                raise RuntimeError(f"ffmpeg failed for {path}: {err.read().decode()[-2000:]}")
        os.replace(out, path)


def is_current(plan: dict[str, Any], path: str) -> bool:
    """True when ``path`` exists and carries this plan's spec hash (rendered already)."""
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return f"{SPEC_TAG}{spec_hash(plan)}".encode() in f.read()


def render_clip(job: tuple[dict[str, Any], str]) -> bool:
    """Render one (plan, path) job unless already current; True when it rendered.

    One tuple argument so it maps directly over a multiprocessing Pool.
    """
    plan, path = job
    if is_current(plan, path):
        return False
    encode(plan, path)
    return True
