"""The Ray Data stage of evaluation: the serving predictor over evaluation items.

Why the serving predictor (``serve_predictor.AVPredictor``): a model is scored on exactly
what its API would answer — the same media policy, decoding, encoders, chat template and
generation code — so an evaluation number describes the deployed model, not a sibling
code path. Each item becomes the chat request an API client would send (media as
``video_url`` / ``audio_url`` / ``image_url`` parts, earlier dialogue turns as messages);
a task that lists stored ``features`` skips decoding and encoding and reads the clip's
feature-shard row instead (the extraction job ran the same encoders).

Rows in: ``task, id, video, audio, image, text, history (JSON), clip_id``.
Rows out: ``task, id, prediction, error, finish_reason, prompt_tokens, completion_tokens``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import numpy as np

from pipelines import storage
from pipelines.eval_config import EvalConfig, TaskConfig
from pipelines.serve_api import ApiError
from pipelines.serve_config import GenerationDefaults, MediaPolicy, ServeConfig
from pipelines.serve_predictor import AVPredictor, GenRequest
from pipelines.train_data import joined_audio, table_rows, tensor_or_none

log = logging.getLogger(__name__)
OUT_KEYS = ("task", "id", "prediction", "error", "finish_reason", "prompt_tokens",
            "completion_tokens")
_PART = {"video": "video_url", "audio": "audio_url", "image": "image_url"}


def serving_config(cfg: EvalConfig) -> ServeConfig:
    """The predictor's settings: greedy decoding, and a media policy for trusted annotation
    files (any local path or s3:// object; only the duration limit applies)."""
    p = cfg.predictor
    longest = max(t.max_tokens for t in cfg.selected().values())
    return ServeConfig(
        checkpoint=cfg.checkpoint, tracking_uri=cfg.tracking.uri, device=p.device,
        torch_threads=p.torch_threads, feature_cache_items=16,
        generation=GenerationDefaults(max_tokens=longest, max_tokens_limit=longest,
                                      temperature=0.0),
        media=MediaPolicy(allowed_root="/", allow_s3=True, max_data_bytes=1,
                          max_fetch_bytes=1 << 40, max_video_s=p.max_video_s,
                          max_frames=1 << 30))


def chat_body(row: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    """An evaluation row → the OpenAI chat request a client would send about it."""
    parts: list[dict[str, Any]] = []
    for kind in ("video", "image", "audio"):
        uri = row.get(kind)
        if uri:
            parts.append({"type": _PART[kind], _PART[kind]: {"url": storage.as_url(uri)}})
    history = json.loads(row.get("history") or "[]")
    messages = [dict(t) for t in history]
    if messages and parts:   # media belong to the dialogue's first user turn
        first = next(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[first]["content"] = parts + [{"type": "text", "text": messages[first]["content"]}]
        parts = []
    messages.append({"role": "user", "content": parts + [{"type": "text", "text": row["text"]}]})
    return {"model": "avray", "messages": messages, "max_tokens": max_tokens,
            "temperature": 0.0}


class FeatureStore:
    """Stored features of one extraction output, read per batch by clip_id."""

    def __init__(self, uri: str):
        import pyarrow.dataset as pads

        from pipelines import shards

        fs, path = storage.filesystem(storage.join(uri, shards.FEATURES_DIR))
        self.dataset = pads.dataset(path, filesystem=fs, format="parquet")
        self.columns = [c for c in ("clip_id", "video", "audio", "audio_events")
                        if c in self.dataset.schema.names]

    def get(self, clip_ids: list[str]) -> dict[str, tuple]:
        import pyarrow.compute as pc

        table = self.dataset.to_table(columns=self.columns,
                                      filter=pc.field("clip_id").isin(sorted(set(clip_ids))))
        return {r["clip_id"]: (tensor_or_none(r.get("video")),
                               joined_audio(r.get("audio"), r.get("audio_events")))
                for r in table_rows(table)}


class EvalPredictor:
    """Ray Data callable class: a batch of evaluation rows → predictions (one generate call
    per batch; an item whose media cannot be used gets an error and no prediction)."""

    def __init__(self, cfg: EvalConfig):
        self.tasks: dict[str, TaskConfig] = cfg.selected()
        self.predictor = AVPredictor(serving_config(cfg))
        self.stores = {n: FeatureStore(t.features) for n, t in self.tasks.items() if t.features}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [{k: _plain(v) for k, v in zip(batch, values)} for values in zip(*batch.values())]
        stored = self._stored_features(rows)
        prepared: list[GenRequest | str] = [self._prepare(r, stored) for r in rows]
        todo = [i for i, p in enumerate(prepared) if isinstance(p, GenRequest)]
        outputs = self.predictor.generator.generate([prepared[i] for i in todo])
        results: list[Any] = list(prepared)
        for i, out in zip(todo, outputs):
            results[i] = out.message if isinstance(out, ApiError) else out
        return _columns(rows, results)

    def _stored_features(self, rows: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
        """(task, clip_id) → features, or the read error (it fails those items, not the run)."""
        wanted: dict[str, list[str]] = {}
        for r in rows:
            if r["task"] in self.stores:
                wanted.setdefault(r["task"], []).append(r["clip_id"])
        out: dict[tuple[str, str], Any] = {}
        for task, ids in wanted.items():
            try:
                found = self.stores[task].get(ids)
            except Exception as err:  # noqa: BLE001 - an unreadable shard
                log.warning("reading stored features for %s failed: %s", task, err)
                found = {cid: f"cannot read stored features: {err}" for cid in ids}
            out.update({(task, cid): feats for cid, feats in found.items()})
        return out

    def _prepare(self, row: dict[str, Any], stored: dict) -> GenRequest | str:
        """The generation request, or the reason there is none (recorded as the error)."""
        task = self.tasks[row["task"]]
        try:
            body = chat_body(row if not task.features else {**row, "video": None,
                                                            "audio": None, "image": None},
                             task.max_tokens)
            req = self.predictor.prepare(body)
            if task.features:
                req = _with_stored(req, row, stored.get((row["task"], row["clip_id"])),
                                   task.features)
            return req if isinstance(req, str) else _restrict(req, task.modalities)
        except ApiError as err:
            return err.message
        except Exception as err:  # noqa: BLE001 - one bad item must not sink the run
            log.warning("item %s/%s failed: %s", row["task"], row["id"], err)
            return f"{type(err).__name__}: {err}"


def _plain(value: Any) -> Any:
    """A numpy batch cell → str or None (Arrow turns an all-null column into NaN floats)."""
    return value if isinstance(value, str) else None


def _with_stored(req: GenRequest, row: dict[str, Any], feats: Any, where: str
                 ) -> GenRequest | str:
    """Stored features on a media-less request. The request was built without media parts,
    so whether the visual is a still comes from the item's own ``image`` column: without
    it an image would pass as a one-frame video (and an image-only task would refuse it)."""
    if feats is None:
        return f"clip {row['clip_id']!r} is not in the features at {where}"
    if isinstance(feats, str):
        return feats
    video, audio = feats
    image = bool(row.get("image")) and video is not None
    if image and video.shape[0] != 1:   # video (T, Nv, Dv): a still is one frame
        return (f"clip {row['clip_id']!r} is an image but its stored features have "
                f"{video.shape[0]} frames")
    return dataclasses.replace(req, video=video, audio=audio, image=image)


def _restrict(req: GenRequest, modalities: list[str]) -> GenRequest | str:
    """Drop the streams a task does not give the model (a video's track is ``audio``)."""
    visual_kind = "image" if req.image else "video"
    video = req.video if visual_kind in modalities else None
    audio = req.audio if "audio" in modalities else None
    if video is None and audio is None:
        return f"the item has none of the task's modalities {modalities}"
    return dataclasses.replace(req, video=video, audio=audio, image=video is not None and req.image)


def _columns(rows: list[dict[str, Any]], results: list[Any]) -> dict[str, list]:
    out: dict[str, list] = {k: [] for k in OUT_KEYS}
    for row, res in zip(rows, results):
        failed = isinstance(res, str)
        out["task"].append(row["task"])
        out["id"].append(row["id"])
        out["prediction"].append(None if failed else res.text)
        out["error"].append(res if failed else None)
        out["finish_reason"].append(None if failed else res.finish_reason)
        out["prompt_tokens"].append(0 if failed else res.prompt_tokens)
        out["completion_tokens"].append(0 if failed else res.completion_tokens)
    return out
