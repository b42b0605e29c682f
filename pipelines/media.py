"""Media decoding shared by ingest, serving and evaluation: frames at ``fps`` and 16 kHz mono.

One function, ``decode_clip``, so that a clip gives the same frames and samples on every
path. Conventions (FAVOR's slot alignment depends on them):

- Frame slot k covers [k/fps, (k+1)/fps) of the clip window; its frame is the one shown at
  the slot's centre, so T = ceil(duration × fps) frames and frame k lines up with audio
  samples [k·sr/fps, (k+1)·sr/fps).
- Audio is resampled by ffmpeg (inside decord) to 16 kHz mono and cut or zero-padded to
  exactly round(duration × 16000) samples. decord keeps AAC's end padding (80,249 samples for
  a 5 s clip), which this trims.
- No silent truncation: a clip longer than ``max_duration_s`` is cut there and flagged
  ``truncated`` so the job summary counts it.
- A missing modality is ``None``: a video without an audio track, or an audio file.
  Anything that cannot be decoded raises ``MediaError`` with a short reason code.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
from decord import AudioReader, VideoReader, cpu

from av_model.configlib import check
from pipelines import storage

SAMPLE_RATE = 16000


class MediaError(Exception):
    """A clip that cannot be used; ``code`` is a short reason for the errors table."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DecodeConfig:
    """How raw media becomes model input."""

    fps: float = 2.0                       # visual frames per second of clip
    frame_size: int = 224                  # square frame side the visual encoder expects
    # squash = resize to frame_size² ignoring aspect; crop = short side to frame_size, centre crop.
    resize: Literal["squash", "crop"] = "squash"
    max_duration_s: float | None = None    # explicit cap; longer clips are cut and counted
    threads: int = 1                       # decoder threads per clip (keep 1 on small hosts)

    def __post_init__(self) -> None:
        check(self.fps > 0, "fps", "must be > 0")
        check(self.frame_size > 0, "frame_size", "must be > 0")
        check(self.max_duration_s is None or self.max_duration_s > 0, "max_duration_s",
              "must be > 0 or null")
        check(self.threads >= 0, "threads", "must be >= 0")


@dataclass
class DecodedClip:
    frames: np.ndarray | None   # (T, S, S, 3) uint8, or None when the media has no video
    audio: np.ndarray | None    # (N,) float32 at 16 kHz, or None when there is no audio
    duration_s: float           # the decoded window's length
    truncated: bool             # True when max_duration_s cut the clip


def _open_video(path: str, cfg: DecodeConfig) -> VideoReader | None:
    """Open at the target size; None if the file has no video stream."""
    try:
        if cfg.resize == "squash":
            return VideoReader(path, ctx=cpu(0), width=cfg.frame_size, height=cfg.frame_size,
                               num_threads=cfg.threads)
        probe = VideoReader(path, ctx=cpu(0), num_threads=cfg.threads)
        h, w = probe[0].shape[:2]
        scale = cfg.frame_size / min(h, w)
        width, height = max(cfg.frame_size, round(w * scale)), max(cfg.frame_size, round(h * scale))
        del probe
        return VideoReader(path, ctx=cpu(0), width=width, height=height, num_threads=cfg.threads)
    except Exception as err:  # decord raises DECORDError/RuntimeError without finer types
        if "cannot find video stream" in str(err):
            return None
        raise MediaError("corrupt_or_unsupported", _short(err)) from err


def _open_audio(path: str) -> np.ndarray | None:
    """Whole audio track at 16 kHz mono; None if the file has no audio stream."""
    try:
        reader = AudioReader(path, ctx=cpu(0), sample_rate=SAMPLE_RATE, mono=True)
        # reader[:] builds an index list of every sample and gathers a copy (25 ms for 10 s
        # of audio, more than decoding it); the decoded (1, N) numpy array is already here.
        samples = reader._array
    except Exception as err:
        if "find audio stream" in str(err):
            return None
        raise MediaError("corrupt_or_unsupported", _short(err)) from err
    return np.asarray(samples[0], dtype=np.float32)  # (1, N) → (N,)


# A window that leaves this much of the file's audio undecoded is cut by ffmpeg itself
# (~40 ms a process): decord decodes a whole track, 0.28 s for 300 s where a 10 s window
# needs 0.01 s (benchmarks/RESULTS.md), and ACAV100M / AudioCaps windows come from whole
# YouTube videos.
WINDOWED_AUDIO_MIN_SKIP_S = 30.0


def _audio_window(path: str, start: float, duration: float) -> np.ndarray | None:
    """The audio of [start, start + duration) only, 16 kHz mono float32, decoded by ffmpeg
    seeking in the file (sample-accurate: it decodes from the packet before ``start`` and
    drops what precedes it); None if the file has no audio stream."""
    import subprocess

    import imageio_ffmpeg

    # The first audio stream; decord's AudioReader takes libavformat's "best" one, the same
    # stream in files with one audio track (multi-track files may differ between the paths).
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-ss", f"{start:.6f}",
           "-i", path, "-t", f"{duration:.6f}", "-map", "0:a:0", "-ac", "1",
           "-ar", str(SAMPLE_RATE), "-f", "f32le", "pipe:1"]
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=60 + duration)
    except subprocess.TimeoutExpired:
        raise MediaError("decode_timeout", f"audio of a {duration:.1f} s window took over "
                                           f"{60 + duration:.0f} s to decode") from None
    if out.returncode != 0:
        err = out.stderr.decode(errors="replace")
        if "matches no streams" in err:
            return None
        raise MediaError("corrupt_or_unsupported", _short(RuntimeError(err)))
    return np.frombuffer(out.stdout, np.float32).copy()   # writable, as decord's arrays are


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[-1] if text else type(err).__name__)[:300]


def _window(total_s: float, start_s: float | None, end_s: float | None,
            cap: float | None) -> tuple[float, float, bool]:
    start_s = None if start_s is None or math.isnan(start_s) else start_s
    end_s = None if end_s is None or math.isnan(end_s) else end_s
    start = max(0.0, start_s or 0.0)
    end = total_s if end_s is None else min(end_s, total_s)
    if end - start <= 1e-3:
        raise MediaError("bad_window",
                         f"window [{start_s}, {end_s}] is empty for media of {total_s:.2f} s")
    truncated = cap is not None and end - start > cap
    return start, (start + cap if truncated else end), truncated


def _sample_frames(vr: VideoReader, start: float, duration: float, cfg: DecodeConfig) -> np.ndarray:
    n = len(vr)
    stamps = vr.get_frame_timestamp(range(n))[:, 0]  # (n,) presentation start times, s
    t = int(math.ceil(duration * cfg.fps - 1e-6))
    centres = start + (np.arange(t) + 0.5) / cfg.fps
    idx = np.clip(np.searchsorted(stamps, centres, side="right") - 1, 0, n - 1)
    frames = vr.get_batch(idx.tolist()).asnumpy()  # (T, H, W, 3) uint8
    if cfg.resize == "crop":
        h, w = frames.shape[1:3]
        top, left = (h - cfg.frame_size) // 2, (w - cfg.frame_size) // 2
        frames = frames[:, top:top + cfg.frame_size, left:left + cfg.frame_size]
    return np.ascontiguousarray(frames)


def _cut_audio(audio: np.ndarray, start: float, duration: float) -> np.ndarray:
    first = int(round(start * SAMPLE_RATE))
    want = int(round(duration * SAMPLE_RATE))
    piece = audio[first:first + want]
    if len(piece) < want:  # audio track shorter than the video: silence, not a shorter clip
        piece = np.pad(piece, (0, want - len(piece)))
    return np.ascontiguousarray(piece, dtype=np.float32)


def decode_file(path: str, cfg: DecodeConfig, start_s: float | None = None,
                end_s: float | None = None) -> DecodedClip:
    """Decode a local media file (video with or without audio, or an audio-only file)."""
    if os.path.getsize(path) == 0:
        raise MediaError("empty_file", f"zero-byte file: {path}")
    vr = _open_video(path, cfg)
    if vr is None:                                  # an audio file: its length is the track's
        audio = _open_audio(path)
        if audio is None:
            raise MediaError("no_streams", "file has neither a video nor an audio stream")
        start, end, truncated = _window(len(audio) / SAMPLE_RATE, start_s, end_s,
                                        cfg.max_duration_s)
        return DecodedClip(None, _cut_audio(audio, start, end - start), end - start, truncated)
    if len(vr) == 0:
        raise MediaError("no_frames", "video stream has no decodable frames")
    total = len(vr) / vr.get_avg_fps()
    start, end, truncated = _window(total, start_s, end_s, cfg.max_duration_s)
    duration = end - start
    frames = _sample_frames(vr, start, duration, cfg)
    if total - duration >= WINDOWED_AUDIO_MIN_SKIP_S:
        audio = _audio_window(path, start, duration)
    else:
        audio = _open_audio(path)
        audio = _cut_audio(audio, start, duration) if audio is not None else audio
    if audio is not None:
        audio = _cut_audio(audio, 0.0, duration)    # exactly round(duration × 16 kHz)
    return DecodedClip(frames, audio, duration, truncated)


def decode_clip(uri: str, cfg: DecodeConfig, start_s: float | None = None,
                end_s: float | None = None) -> DecodedClip:
    """Decode any supported URI (local path, file://, s3://). Raises MediaError.

    Fetch problems (missing object, access denied, throttling) get codes of their own so the
    errors table tells storage trouble from broken media.
    """
    fetched = False
    try:
        with storage.local_copy(uri) as path:
            fetched = True
            return decode_file(path, cfg, start_s, end_s)
    except FileNotFoundError as err:
        raise MediaError("missing_file", str(err)) from err
    except MediaError:
        raise
    except Exception as err:
        if fetched:
            raise
        raise MediaError("fetch_failed", f"{type(err).__name__}: {_short(err)}") from err
