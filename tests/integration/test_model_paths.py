"""The stored-features path (ingest's own stages → parquet) equals the raw-media path
(decode → AVModel.encode_media) on a real mp4, up to the float16 storage of the shards."""

import json

import numpy as np
import pyarrow.parquet as pq
import torch

from av_model.config import AudioEventEncoderConfig
from av_model.encoders import join_audio
from av_model.model import AVModel, Sample
from pipelines import extract_stages as st
from pipelines.media import DecodeConfig, decode_clip
from tests.av_model.model_helpers import TURNS, tiny_config
from tests.media_factory import make_video


def _ingest(uri: str, cfg, out: str) -> dict[str, np.ndarray]:
    """Run the extract job's decode → fused encoders → writer on one clip, read it back."""
    batch = {"clip_id": np.array(["c0"], dtype=object), "uri": np.array([uri], dtype=object),
             "manifest": np.array([json.dumps({"clip_id": "c0", "uri": uri})], dtype=object)}
    decode = DecodeConfig(fps=cfg.encoders.fps, frame_size=32)
    batch = st.decode_batch(batch, decode)
    enc = cfg.encoders
    batch = st.FusedEncodeStage(enc.visual, enc.audio, enc.audio_events, "cpu")(batch)
    summary = st.write_batch(batch, out, enc.fps, {}, "float16")
    assert list(summary["error"]) == [""]
    table = pq.read_table(f"{out}/features")
    return {c: np.asarray(table.column(c).chunk(0).to_numpy()[0], np.float32)
            for c in ("video", "audio", "audio_events")}


def test_stored_features_path_equals_raw_media_path(tiny_encoders, tmp_path):
    mp4 = make_video(tmp_path / "clip.mp4", seconds=4.2, size="80x60")
    cfg = tiny_config(tiny_encoders, events=True)
    stored = _ingest(str(mp4), cfg, str(tmp_path / "out"))
    torch.manual_seed(0)
    model = AVModel.build(cfg, load_encoders=True).eval()
    clip = decode_clip(str(mp4), DecodeConfig(fps=cfg.encoders.fps, frame_size=32))
    video, audio = model.encode_media(clip.frames, clip.audio)
    assert video.shape == stored["video"].shape == (9, 17, 32)       # ceil(4.2 s x 2 fps)
    np.testing.assert_allclose(video.numpy(), stored["video"], atol=2e-2, rtol=1e-2)
    stored_audio = join_audio(torch.from_numpy(stored["audio"]),
                              torch.from_numpy(stored["audio_events"]))
    assert audio.shape == stored_audio.shape == (210, 64)            # 4.2 s x 50 Hz
    np.testing.assert_allclose(audio.numpy(), stored_audio.numpy(), atol=2e-2, rtol=1e-2)
    with torch.no_grad():
        raw = model(**model.collate([Sample(TURNS, video, audio)])).logits
        feat = model(**model.collate([Sample(TURNS, torch.from_numpy(stored["video"]),
                                             stored_audio)])).logits
    torch.testing.assert_close(raw, feat, atol=2e-2, rtol=1e-2)
    assert isinstance(cfg.encoders.audio_events, AudioEventEncoderConfig)
