"""Ray Data stages of feature extraction: plain callables, dict batch in, dict batch out.

decode_batch (CPU task) → VisualStage → AudioStage → [AudioEventStage] (actor pools, GPU
when configured) → write_batch (task) → one summary row per clip.

Decoded media travels between stages as raw bytes (uint8 frames, float32 samples): Ray turns
ragged numpy arrays into tensor-extension Arrow columns at every stage boundary, which cost
17.8 ms per 10 s clip (more than a quarter of decoding it); a binary column costs 2 ms.
Features, which are small, travel as arrays.

Failed clips flow through as rows whose ``error`` is set and whose media columns are empty,
so every stage sees them, skips them, and the writer records them in the errors table; a
corrupt file never stops the job. Encoder stages fall back to one clip at a time when a
batch fails, so one bad clip cannot take its batch-mates down with it.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from pipelines import shards
from pipelines.corpora.base import error_row
from pipelines.media import DecodeConfig, MediaError, decode_clip

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]


def _objects(items: list[Any]) -> np.ndarray:
    """A 1-D object array (numpy would otherwise stack equal-shaped arrays into one)."""
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _failed(batch: Batch, i: int) -> bool:
    return bool(batch["error"][i])


def decode_batch(batch: Batch, decode: DecodeConfig) -> Batch:
    """Manifest rows → frames (T,S,S,3) uint8 and waveform (N,) float32 per clip."""
    cols: dict[str, list] = {k: [] for k in ("frames", "waveform", "has_video", "has_audio",
                                               "duration_s", "truncated", "error_stage",
                                               "error", "message")}
    for i in range(len(batch["clip_id"])):
        row = json.loads(batch["manifest"][i])
        clip, stage, code, message = None, "", "", ""
        try:
            clip = decode_clip(row["uri"], decode, row.get("start_s"), row.get("end_s"))
        except MediaError as err:
            stage = "fetch" if err.code in ("missing_file", "fetch_failed") else "decode"
            code, message = err.code, str(err)
        except Exception as err:  # never let one file stop the job; keep the reason
            stage, code, message = "decode", type(err).__name__, str(err)[:500]
        ok = clip is not None
        cols["frames"].append(clip.frames.tobytes() if ok and clip.frames is not None else b"")
        cols["waveform"].append(clip.audio.tobytes() if ok and clip.audio is not None else b"")
        cols["has_video"].append(ok and clip.frames is not None)
        cols["has_audio"].append(ok and clip.audio is not None)
        cols["duration_s"].append(clip.duration_s if ok else 0.0)
        cols["truncated"].append(ok and clip.truncated)
        cols["error_stage"].append(stage)
        cols["error"].append(code)
        cols["message"].append(message)
    out = {k: batch[k] for k in ("clip_id", "uri", "manifest")}
    out.update({k: _objects(v) if k in ("frames", "waveform") else np.asarray(v)
                for k, v in cols.items()})
    return out


class _EncoderStage:
    """Encode one modality of a batch; subclasses say which columns and how."""

    input_col: str
    output_col: str
    stage_name: str

    def __init__(self, build: Callable[[], Any], threads: int, drop_input: bool):
        import torch

        torch.set_num_threads(max(1, threads))
        self.encoder = build()
        self.drop_input = drop_input

    def _empty(self) -> np.ndarray:
        return np.zeros((0, *self.token_shape()), np.float16)

    def token_shape(self) -> tuple[int, ...]:
        return (self.encoder.hidden_size,)

    def _encode(self, items: list[bytes]) -> list[np.ndarray]:
        return self.encoder.encode([np.frombuffer(b, np.float32) for b in items])

    def _present(self, batch: Batch, i: int) -> bool:
        return not _failed(batch, i) and len(batch[self.input_col][i]) > 0

    def __call__(self, batch: Batch) -> Batch:
        for key in ("error_stage", "error", "message"):  # fixed-width str arrays would clip
            batch[key] = np.asarray(batch[key], dtype=object)
        idx = [i for i in range(len(batch["clip_id"])) if self._present(batch, i)]
        outs = [self._empty() for _ in batch["clip_id"]]
        try:
            encoded = self._encode([batch[self.input_col][i] for i in idx])
            for i, feat in zip(idx, encoded):
                outs[i] = feat.astype(np.float16)
        except Exception:  # isolate the clip that breaks the batch
            log.exception("%s failed on a batch; retrying clip by clip", self.stage_name)
            for i in idx:
                try:
                    outs[i] = self._encode([batch[self.input_col][i]])[0].astype(np.float16)
                except Exception as err:
                    batch["error_stage"][i] = self.stage_name
                    batch["error"][i] = type(err).__name__
                    batch["message"][i] = str(err)[:500]
        batch[self.output_col] = _objects(outs)
        if self.drop_input:
            del batch[self.input_col]
        return batch


class VisualStage(_EncoderStage):
    input_col, output_col, stage_name = "frames", "video", "encode_video"

    def __init__(self, cfg, device: str, threads: int = 1):
        from av_model.encoders import VisualEncoder

        super().__init__(lambda: VisualEncoder(cfg, device=device), threads, drop_input=True)

    def token_shape(self) -> tuple[int, ...]:
        return (self.encoder.num_tokens, self.encoder.hidden_size)

    def _encode(self, items: list[bytes]) -> list[np.ndarray]:
        if not items:
            return []
        size = self.encoder.spec.image_size
        frames = [np.frombuffer(b, np.uint8).reshape(-1, size, size, 3) for b in items]
        tokens = self.encoder.encode(np.concatenate(frames, axis=0))  # (ΣT, Nv, Dv)
        return np.split(tokens, np.cumsum([len(f) for f in frames])[:-1])


class AudioStage(_EncoderStage):
    input_col, output_col, stage_name = "waveform", "audio", "encode_audio"

    def __init__(self, cfg, device: str, threads: int = 1, drop_input: bool = True):
        from av_model.encoders import WhisperAudioEncoder

        super().__init__(lambda: WhisperAudioEncoder(cfg, device=device), threads, drop_input)


class AudioEventStage(_EncoderStage):
    input_col, output_col, stage_name = "waveform", "audio_events", "encode_audio_events"

    def __init__(self, cfg, device: str, threads: int = 1):
        from av_model.encoders.bundle import event_encoder

        super().__init__(lambda: event_encoder(cfg, device=device), threads, drop_input=True)


class FusedEncodeStage:
    """All encoders in one actor: one torch/transformers start-up instead of one per pool.

    Worth it where start-up dominates (small CPU hosts, short runs); separate pools let a
    GPU cluster scale the visual and audio towers independently.
    """

    def __init__(self, visual, audio, events, device: str, threads: int = 1):
        self.stages: list[_EncoderStage] = [
            VisualStage(visual, device, threads),
            AudioStage(audio, device, threads, drop_input=events is None)]
        if events is not None:
            self.stages.append(AudioEventStage(events, device, threads))

    def __call__(self, batch: Batch) -> Batch:
        for stage in self.stages:
            batch = stage(batch)
        return batch


def write_batch(batch: Batch, output: str, fps: float, metadata: dict[str, Any],
                dtype: str) -> Batch:
    """Write ok rows as one feature shard and failed rows as one errors part; summarise."""
    ok_rows, err_rows, failed = [], [], set()
    for i in range(len(batch["clip_id"])):
        row = json.loads(batch["manifest"][i])
        if _failed(batch, i):
            err_rows.append(error_row(row["clip_id"], row["uri"], str(batch["error_stage"][i]),
                                      str(batch["error"][i]), str(batch["message"][i])))
            continue
        feat = {k: row.get(k) for k in ("clip_id", "source", "split", "uri", "start_s",
                                        "caption", "labels", "conversations", "meta")}
        feat.update(duration_s=float(batch["duration_s"][i]), fps=fps,
                    truncated=bool(batch["truncated"][i]), has_video=bool(batch["has_video"][i]),
                    has_audio=bool(batch["has_audio"][i]))
        for col in shards.TENSOR_COLUMNS:
            if col in batch:
                feat[col] = batch[col][i]
        ok_rows.append(feat)
    try:
        shards.write_features(output, ok_rows, metadata, dtype)
    except (pa.ArrowException, ValueError, TypeError):  # isolate the row Arrow rejects
        log.exception("a shard failed to build; writing its rows one by one")
        for row in ok_rows:
            try:
                shards.write_features(output, [row], metadata, dtype)
            except (pa.ArrowException, ValueError, TypeError) as err:
                err_rows.append(error_row(row["clip_id"], row["uri"], "write",
                                          type(err).__name__, str(err)[:500]))
                failed.add(row["clip_id"])
    shards.write_errors(output, err_rows)
    errors = [("write" if cid in failed else e) for cid, e in zip(batch["clip_id"], batch["error"])]
    return {"clip_id": batch["clip_id"], "error": np.asarray(errors, dtype=object),
            "duration_s": batch["duration_s"], "truncated": batch["truncated"]}
