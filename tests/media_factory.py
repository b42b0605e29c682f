"""Real media files for tests, made with the ffmpeg binary from the imageio-ffmpeg wheel."""

from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def make_video(path: Path, seconds: float = 3.0, *, audio: bool = True, rate: int = 44100,
               channels: int = 2, fps: int = 25, size: str = "96x64", tone_hz: int = 440) -> Path:
    """An H.264 mp4 (test pattern) with an optional AAC tone track."""
    cmd = [FFMPEG, "-y", "-loglevel", "error", "-f", "lavfi",
           "-i", f"testsrc=size={size}:rate={fps}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency={tone_hz}:sample_rate={rate}",
                "-ac", str(channels), "-c:a", "aac"]
    cmd += ["-t", str(seconds), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, check=True)
    return path


def make_broken(directory: Path) -> dict[str, Path]:
    """A truncated mp4, a zero-byte mp4 and a text file named .mp4."""
    good = make_video(directory / "_source.mp4", 2.0)
    truncated = directory / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[:4000])
    empty = directory / "empty.mp4"
    empty.write_bytes(b"")
    text = directory / "notes.mp4"
    text.write_text("this is not a video\n")
    good.unlink()
    return {"corrupt": truncated, "empty": empty, "text": text}
