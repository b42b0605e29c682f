"""Feature shards → training samples → padded batches.

Rows come from the parquet shards ingest writes (``pipelines.shards``): ``video`` (T×Nv×Dv),
``audio`` (A×Da), optional ``audio_events``, ``conversations`` / ``caption``. The collator
turns a batch of rows into ``av_model.model.Sample`` objects, applies modality augmentation
and unpaired audio-visual mixing, and pads through the model's own processor, so the prompt
a model trains on is byte-identical to the one it is served with.
"""

from __future__ import annotations

import json
import zlib
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from av_model.encoders.bundle import join_audio
from av_model.model import AVModel, Sample
from pipelines.train_config import DataConfig

COLUMNS = ["clip_id", "split", "video", "audio", "audio_events", "has_video", "has_audio",
           "caption", "conversations"]


def tensor_or_none(x: Any) -> torch.Tensor | None:
    """A stored feature array → tensor, None when the stream is absent (zero-length)."""
    if x is None:
        return None
    arr = np.asarray(x)
    return None if arr.size == 0 or arr.shape[0] == 0 else torch.from_numpy(np.array(arr))


def _turns(raw: Any) -> list[dict[str, str]]:
    """Stored conversations (list of {role, content}, or their JSON) → plain dicts."""
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = json.loads(raw) if raw else []
    return [{"role": str(t["role"]), "content": str(t["content"])} for t in list(raw)]


def one_exchange(turns: list[dict[str, str]], rng: np.random.Generator) -> list[dict[str, str]]:
    """A random user turn with its answer, after any system turns. The media placeholder
    need not come along: the processor puts the sample's modality token before the first
    user turn when no turn names it, as the corpora write it ("<AUD_VIS>\n...")."""
    system = [t for t in turns if t["role"] == "system"]
    rest = [t for t in turns if t["role"] != "system"]
    pairs = [k for k in range(len(rest) - 1)
             if rest[k]["role"] == "user" and rest[k + 1]["role"] == "assistant"]
    if len(pairs) <= 1:
        return turns
    k = pairs[int(rng.integers(len(pairs)))]
    return system + [dict(rest[k]), dict(rest[k + 1])]


def _column(batch: dict[str, Any], name: str, n: int) -> list[Any]:
    return list(batch[name]) if name in batch else [None] * n


class Collator:
    """numpy batch of shard rows → the model's padded batch (plus counts for metrics).

    Its random draws (modality mix, unpaired audio, caption visits, which exchange a sample
    trains on) come from a generator seeded by (seed, epoch, the batch's clip ids), not from
    one running stream: Ray collates ahead of the loop in a prefetch thread and a resumed run
    re-reads the batches it skips, so a stream's position at a checkpoint would not be the
    loop's. Per-batch seeding gives a resumed run the uninterrupted run's draws.
    """

    def __init__(self, model: AVModel, cfg: DataConfig, seed: int = 0):
        self.model, self.cfg, self.seed = model, cfg, seed
        self.epoch = 0
        mix = np.array([cfg.joint, cfg.video_only, cfg.audio_only], dtype=float)
        self.mix = mix / mix.sum()

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch's batches: the same batch in another epoch draws anew."""
        self.epoch = epoch

    def batch_rng(self, clip_ids: Iterable[Any]) -> np.random.Generator:
        key = zlib.crc32("\0".join(str(c) for c in clip_ids).encode())
        return np.random.default_rng([self.seed, self.epoch, key])

    def samples(self, batch: dict[str, Any]) -> list[Sample]:
        n = len(batch["clip_id"])
        rng = self.batch_rng(batch["clip_id"])
        audio = [joined_audio(a, e) for a, e in zip(_column(batch, "audio", n),
                                                _column(batch, "audio_events", n))]
        rows = [self._sample(v, a, c, cap, rng) for v, a, c, cap in zip(
            _column(batch, "video", n), audio, _column(batch, "conversations", n),
            _column(batch, "caption", n))]
        rows = [r for r in rows if r is not None]
        self._unpaired(rows, rng)
        return [s for s, _, _ in rows]

    def _sample(self, video, audio, conversations, caption,
                rng: np.random.Generator) -> tuple[Sample, str | None, bool] | None:
        """(sample, caption when it is the target, clip has audio), None if unsupervised."""
        v = tensor_or_none(video)
        turns = _turns(conversations) if self.cfg.use_conversations else []
        if turns and caption and self.cfg.caption_mix and rng.random() < self.cfg.caption_mix:
            turns = []                                      # this visit trains the caption
        if self.cfg.turns == "one":
            turns = one_exchange(turns, rng)
        cap = None
        if not turns and self.cfg.use_captions and caption:
            cap = str(caption)
            turns = [{"role": "user", "content": self.cfg.caption_prompt},
                     {"role": "assistant", "content": cap}]
        if not turns or (v is None and audio is None):
            return None
        had_audio = audio is not None
        if v is not None and audio is not None:
            choice = rng.choice(3, p=self.mix)              # joint, visual-only, audio-only
            v, audio = (v, audio) if choice == 0 else (v, None) if choice == 1 else (None, audio)
        return Sample(turns, video=v, audio=audio), cap, had_audio

    def _unpaired(self, rows: list[tuple[Sample, str | None, bool]],
                  rng: np.random.Generator) -> None:
        """video-SALMONN: a caption clip that has no audio track borrows another's audio."""
        if self.cfg.unpaired <= 0:
            return
        donors = [(s, c) for s, c, _ in rows if s.audio is not None and c]
        for sample, cap, had_audio in rows:
            if had_audio or sample.video is None or not cap or not donors:
                continue
            if rng.random() >= self.cfg.unpaired:
                continue
            donor, donor_cap = donors[int(rng.integers(len(donors)))]
            sample.audio = donor.audio
            if self.cfg.unpaired_target == "concat":
                sample.turns = [sample.turns[0], {"role": "assistant",
                                                  "content": f"{cap} {donor_cap}"}]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        samples = self.samples(batch)
        counted = len(samples)
        if not samples:
            # Every rank must still run a forward/backward (collectives): a text-only
            # sample with no answer tokens contributes exactly zero loss.
            samples = [Sample([{"role": "user", "content": "."}])]
        out = self.model.collate(samples, generation=not counted)
        out["labels"] = out["labels"] if counted else torch.full_like(out["input_ids"], -100)
        out["samples"] = samples
        out["num_samples"] = counted
        out["num_tokens"] = int(out["attention_mask"].sum()) if counted else 0
        return out


def joined_audio(audio: Any, events: Any) -> torch.Tensor | None:
    a = tensor_or_none(audio)
    if a is None:
        return None
    e = tensor_or_none(events)
    return join_audio(a, e) if events is not None else a


def read_rows(features: str, split: str | None = None) -> list[dict[str, Any]]:
    """All shard rows as dicts with numpy feature arrays, without Ray (small sets: tests,
    benchmarks, quick looks); the training job streams through Ray Data instead."""
    import pyarrow.dataset as pads

    from pipelines import shards, storage

    fs, path = storage.filesystem(storage.join(features, shards.FEATURES_DIR))
    table = pads.dataset(path, filesystem=fs, format="parquet").to_table()
    return [r for r in table_rows(table) if split is None or r.get("split") == split]


def table_rows(table) -> list[dict[str, Any]]:
    """A feature-shard arrow table → row dicts (feature columns as numpy arrays)."""
    from pipelines import shards

    names = [c for c in COLUMNS if c in table.column_names]
    tensors = {c: [x for chunk in table.column(c).chunks for x in chunk.to_numpy()]
               for c in names if c in shards.TENSOR_COLUMNS}
    rows = []
    for i in range(table.num_rows):
        row = {c: table.column(c)[i].as_py() for c in names if c not in tensors}
        row.update({c: np.asarray(v[i]) for c, v in tensors.items()})
        rows.append(row)
    return rows


def iterate_rows(rows: list[dict[str, Any]], batch_size: int) -> Iterable[dict[str, Any]]:
    """Plain-Python batches of row dicts in the numpy-batch layout (tests, benchmarks)."""
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        yield {k: np.array([r.get(k) for r in chunk] + [None], dtype=object)[:-1]
               for k in chunk[0]}


def row_epochs(rows: list[dict[str, Any]], collator: Collator, batch_size: int,
               shuffle_seed: int | None = None) -> Callable[[int, int], Iterator[dict]]:
    """In-memory rows as ``Trainer.fit``'s ``epochs(epoch, skip)``: the Ray shard
    iteration's counterpart for tests and benchmarks. With ``shuffle_seed`` every epoch has
    its own permutation, a function of (seed, epoch), so a resumed run sees the same order;
    skipped batches are not collated."""
    def epochs(epoch: int, skip: int) -> Iterator[dict]:
        collator.set_epoch(epoch)
        order = rows if shuffle_seed is None else \
            [rows[i] for i in np.random.default_rng([shuffle_seed, epoch]).permutation(len(rows))]
        for i, batch in enumerate(iterate_rows(order, batch_size)):
            if i >= skip:
                yield collator(batch)
    return epochs
