"""Ray Data stages called directly (no Ray): one bad clip never sinks its batch."""

import json

import numpy as np

from av_model.config import AudioEncoderConfig, VisualEncoderConfig
from pipelines import extract_stages as st


def _batch(n: int) -> dict:
    ids = [f"c{i}" for i in range(n)]
    return {"clip_id": np.array(ids, dtype=object), "uri": np.array(ids, dtype=object),
            "manifest": np.array([json.dumps({"clip_id": c, "uri": c}) for c in ids], dtype=object),
            "error_stage": np.array([""] * n), "error": np.array([""] * n),
            "message": np.array([""] * n)}


def test_visual_stage_isolates_a_bad_clip(tiny_encoders):
    stage = st.VisualStage(VisualEncoderConfig(tiny_encoders["visual"]), "cpu")
    batch = _batch(3)
    batch["frames"] = st._objects([np.zeros((2, 32, 32, 3), np.uint8).tobytes(),
                                   np.zeros((3, 10, 10, 3), np.uint8).tobytes(),  # wrong size
                                   b""])  # no video
    out = stage(batch)
    assert "frames" not in out
    assert [v.shape for v in out["video"]] == [(2, 17, 32), (0, 17, 32), (0, 17, 32)]
    assert list(out["error"]) == ["", "ValueError", ""]
    assert out["error_stage"][1] == "encode_video" and "reshape" in out["message"][1]
    assert out["video"][0].dtype == np.float16


def test_audio_stage_keeps_waveform_for_the_event_stage(tiny_encoders):
    stage = st.AudioStage(AudioEncoderConfig(tiny_encoders["audio"]), "cpu", drop_input=False)
    batch = _batch(2)
    batch["error"] = np.array(["", "corrupt_or_unsupported"])  # failed upstream: skipped
    batch["waveform"] = st._objects([np.zeros(16000, np.float32).tobytes(), b""])
    out = stage(batch)
    assert [a.shape for a in out["audio"]] == [(50, 32), (0, 32)] and "waveform" in out
