"""Decoding real files: the shared recordings, ffmpeg-made videos, broken files, S3."""

import math

import boto3
import numpy as np
import pytest

from pipelines.media import DecodeConfig, MediaError, decode_clip
from tests.media_factory import make_broken, make_video

CFG = DecodeConfig(fps=2.0, frame_size=32)


def test_librispeech_flac_16k_mono(shared_media):
    clip = decode_clip(str(shared_media / "1272-128104-0000.flac"), CFG)
    assert clip.frames is None
    assert clip.audio.dtype == np.float32 and clip.audio.ndim == 1
    assert len(clip.audio) == 93680  # 5.855 s at 16 kHz
    assert clip.duration_s == pytest.approx(5.855, abs=1e-3)


def test_jfk_flac_44k_stereo_resampled(shared_media):
    clip = decode_clip("file://" + str(shared_media / "jfk.flac"), CFG)
    assert len(clip.audio) == 176000  # 11.0 s at 16 kHz mono
    assert clip.duration_s == pytest.approx(11.0, abs=1e-3)
    assert 0.01 < float(np.abs(clip.audio).mean()) < 0.5


@pytest.mark.parametrize("rate,channels", [(44100, 2), (48000, 1), (16000, 1)])
def test_video_with_audio_any_rate(tmp_path, rate, channels):
    path = make_video(tmp_path / "v.mp4", 3.0, rate=rate, channels=channels, tone_hz=1000)
    clip = decode_clip(str(path), CFG)
    assert clip.frames.shape == (6, 32, 32, 3) and clip.frames.dtype == np.uint8
    assert len(clip.audio) == 48000  # AAC end padding trimmed to the container duration
    window = clip.audio[4000:20000]
    spectrum = np.abs(np.fft.rfft(window))
    hz_per_bin = 16000 / len(window)  # 1 Hz
    assert abs(np.argmax(spectrum) * hz_per_bin - 1000) <= 2


def test_window_cap_and_crop(tmp_path):
    path = make_video(tmp_path / "v.mp4", 5.0, size="128x64")
    clip = decode_clip(str(path), DecodeConfig(fps=2.0, frame_size=32, resize="crop",
                                               max_duration_s=1.6), start_s=1.0, end_s=4.5)
    assert clip.truncated and clip.duration_s == pytest.approx(1.6)
    assert clip.frames.shape == (math.ceil(1.6 * 2), 32, 32, 3)
    assert len(clip.audio) == round(1.6 * 16000)
    with pytest.raises(MediaError) as err:
        decode_clip(str(path), CFG, start_s=7.0, end_s=9.0)
    assert err.value.code == "bad_window"


def test_a_short_window_of_a_long_video_decodes_only_its_audio(tmp_path, monkeypatch):
    """A 4 s window of a 75 s video (ACAV100M / AudioCaps style): ffmpeg decodes just the
    window's audio, at the right place (a tone switched on at 61.25 s starts 1.25 s into
    the window starting at 60 s); a long video without audio gives None as before."""
    import subprocess

    from pipelines import media
    from tests.media_factory import FFMPEG

    path = tmp_path / "long.mp4"
    subprocess.run([FFMPEG, "-y", "-loglevel", "error", "-f", "lavfi",
                    "-i", "testsrc=size=64x48:rate=10", "-f", "lavfi", "-i",
                    "aevalsrc='if(gte(t,61.25),0.5*sin(2*PI*1000*t),0)':s=44100:c=stereo",
                    "-t", "75", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
                    str(path)], check=True)
    whole_track = media._open_audio
    monkeypatch.setattr(media, "_open_audio", lambda p: pytest.fail("decoded the whole track"))
    clip = decode_clip(str(path), CFG, start_s=60.0, end_s=64.0)
    assert clip.frames.shape == (8, 32, 32, 3) and len(clip.audio) == 64000
    onset = int(np.argmax(np.abs(clip.audio) > 0.05)) / 16000
    assert onset == pytest.approx(1.25, abs=0.005)
    spectrum = np.abs(np.fft.rfft(clip.audio[24000:40000]))
    assert abs(int(np.argmax(spectrum)) - 1000) <= 2                 # 1 Hz per bin
    # What cutting the whole decoded track gives, per 20 ms frame (Whisper's rate): decord
    # places the onset about 1 ms later, a phase shift that a sample-wise match would see.
    whole = media._cut_audio(whole_track(str(path)), 60.0, 4.0)
    rms = [np.sqrt((a.reshape(-1, 320) ** 2).mean(axis=1)) for a in (clip.audio, whole)]
    assert np.abs(rms[0] - rms[1]).max() < 0.1 * rms[1].max()
    silent = make_video(tmp_path / "silent.mp4", 40.0, audio=False)
    assert decode_clip(str(silent), CFG, start_s=1.0, end_s=3.0).audio is None


def test_video_without_audio_track(tmp_path):
    clip = decode_clip(str(make_video(tmp_path / "silent.mp4", 2.5, audio=False)), CFG)
    assert clip.audio is None and clip.duration_s == pytest.approx(2.5, abs=0.05)
    assert clip.frames.shape == (math.ceil(clip.duration_s * 2), 32, 32, 3)


def test_broken_files_raise_media_errors(tmp_path):
    broken = make_broken(tmp_path)
    codes = {}
    for name, path in [*broken.items(), ("missing", tmp_path / "nope.mp4")]:
        with pytest.raises(MediaError) as err:
            decode_clip(str(path), CFG)
        codes[name] = err.value.code
    assert codes == {"corrupt": "corrupt_or_unsupported", "empty": "empty_file",
                     "text": "corrupt_or_unsupported", "missing": "missing_file"}


def test_decode_from_s3(tmp_path, s3_server):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="media")
    s3.upload_file(str(make_video(tmp_path / "v.mp4", 2.0)), "media", "clips/v.mp4")
    clip = decode_clip("s3://media/clips/v.mp4", CFG)
    assert clip.frames.shape == (4, 32, 32, 3) and len(clip.audio) == 32000
    with pytest.raises(MediaError) as err:
        decode_clip("s3://media/clips/absent.mp4", CFG)
    assert err.value.code == "missing_file"
