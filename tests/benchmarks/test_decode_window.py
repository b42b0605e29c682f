"""The window-decoding benchmark runs (tiny sizes) and measures both audio paths."""

from benchmarks import decode_window
from pipelines import media


def test_decode_window_benchmark_measures_both_paths(monkeypatch):
    calls = {"track": 0, "window": 0}
    track, window = media._open_audio, media._audio_window

    def counted(name, fn):
        def wrapper(*args):
            calls[name] += 1
            return fn(*args)
        return wrapper

    monkeypatch.setattr(media, "_open_audio", counted("track", track))
    monkeypatch.setattr(media, "_audio_window", counted("window", window))
    out = decode_window.run(long_s=40.0, window_s=2.0, size="64x48", repeats=1)
    assert set(out) == {"clip_s", "window_s", "track_s", "track_over_window", "window_over_clip"}
    assert all(v > 0 for v in out.values())
    # The standalone clip and the forced whole-track run read whole tracks; the window not.
    assert calls == {"track": 2, "window": 1}
    assert media.WINDOWED_AUDIO_MIN_SKIP_S == 30.0          # restored after the forced run
