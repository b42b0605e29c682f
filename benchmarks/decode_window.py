"""Decoding a short window of a long video: the window's audio alone vs the whole track.

ACAV100M and AudioCaps name 10 s windows of whole YouTube videos. decord decodes an audio
track whole, so a window's cost grows with the video; ``pipelines.media`` hands a window
that leaves at least ``WINDOWED_AUDIO_MIN_SKIP_S`` of audio undecoded to ffmpeg instead.
All three modes run in one process on files made here (H.264 + AAC 44.1 kHz stereo):

  clip      a standalone clip of the window's length, decoded whole (the floor)
  window    the window of the long video, as the job decodes it
  track     the same window with the whole-track path forced (the code before the change)

    python -m benchmarks.decode_window --long-s 300 --window-s 10 --size 596x336
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

from pipelines import media
from pipelines.media import DecodeConfig, decode_clip


def _render(path: Path, seconds: float, size: str) -> Path:
    """An mp4 like the test corpus's: a test pattern with a tone track."""
    import subprocess

    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error",
                    "-f", "lavfi", "-i", f"testsrc=size={size}:rate=25",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-ac", "2",
                    "-c:a", "aac", "-t", str(seconds), "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    str(path)], check=True)
    return path


def _median_s(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(long_s: float, window_s: float, size: str, repeats: int) -> dict[str, float]:
    cfg = DecodeConfig(fps=2.0, frame_size=224)
    start = long_s / 2
    with tempfile.TemporaryDirectory() as tmp:
        long = str(_render(Path(tmp) / "long.mp4", long_s, size))
        clip = str(_render(Path(tmp) / "clip.mp4", window_s, size))
        out = {"clip_s": _median_s(lambda: decode_clip(clip, cfg), repeats),
               "window_s": _median_s(lambda: decode_clip(long, cfg, start, start + window_s),
                                     repeats)}
        threshold = media.WINDOWED_AUDIO_MIN_SKIP_S
        media.WINDOWED_AUDIO_MIN_SKIP_S = math.inf
        try:
            out["track_s"] = _median_s(
                lambda: decode_clip(long, cfg, start, start + window_s), repeats)
        finally:
            media.WINDOWED_AUDIO_MIN_SKIP_S = threshold
    out["track_over_window"] = out["track_s"] / out["window_s"]
    out["window_over_clip"] = out["window_s"] / out["clip_s"]
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--long-s", type=float, default=300.0)
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--size", default="596x336")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    result = run(args.long_s, args.window_s, args.size, args.repeats)
    print(json.dumps({k: round(v, 4) for k, v in result.items()}, indent=2))
    return result


if __name__ == "__main__":
    main()
