"""Feature extraction: a corpus → Ray Data decoding → frozen encoders → parquet feature shards.

Features are computed once here; training streams the shards and never loads an encoder.

Run locally (starts a local Ray) or on a cluster:

    python -m pipelines.extract_features --config pipelines/configs/extract/tiny.yaml \\
        corpus.path=data/synth/manifest.jsonl output=data/features
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python -m pipelines.extract_features \\
        --config pipelines/configs/extract/clip-b16-whisper-small.yaml \\
        corpus.name=webvid corpus.path=s3://bucket/webvid/results_10M_train.csv \\
        corpus.media_root=s3://bucket/webvid/videos output=s3://bucket/features/webvid

A rerun on the same output skips clips already written (and retries failed ones unless
``retry_failed=false``); see ``pipelines.shards`` for the on-disk layout.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from av_model.config import EncodersConfig
from av_model.configlib import ConfigError, check, to_dict
from pipelines import jobs, shards, storage
from pipelines.corpora import ADAPTERS, build_manifest, jsonl
from pipelines.corpora.base import ManifestResult, dedupe
from pipelines.media import DecodeConfig

log = logging.getLogger("avray.extract")


@dataclass(frozen=True)
class CorpusConfig:
    """Where the clips come from."""

    # "manifest" (a manifest file in DESIGN §3's schema) or an adapter: webvid, vggsound,
    # acav, audiocaps, jsonl.
    name: str = "manifest"
    path: str = ""                   # manifest file, or the corpus's metadata file
    media_root: str | None = None    # where an adapter finds media files
    split: str | None = None         # keep only this split (adapters that have splits)
    limit: int | None = None         # first N rows only (smoke runs)
    check_files: bool = True         # adapters: record missing local files as errors up front

    def __post_init__(self) -> None:
        check(bool(self.path), "path", "must name a manifest or metadata file")
        names = ["manifest", *sorted(ADAPTERS)]
        check(self.name in names, "name", f"must be one of {names}, got {self.name!r}")
        check(self.limit is None or self.limit > 0, "limit", "must be > 0 or null")


@dataclass(frozen=True)
class PoolConfig:
    """An encoder actor pool: size and per-actor resources (GPU on clusters)."""

    min_size: int = 1
    max_size: int = 1
    num_cpus: float = 0.5     # fractional on small hosts: whole CPUs deadlock 2-core Data jobs
    num_gpus: float = 0.0
    batch_size: int = 4       # clips per encoder call
    threads: int = 1          # torch threads per actor

    def __post_init__(self) -> None:
        check(1 <= self.min_size <= self.max_size, "min_size", "need 1 <= min_size <= max_size")
        check(self.batch_size > 0, "batch_size", "must be > 0")
        check(self.num_cpus > 0 or self.num_gpus > 0, "num_cpus", "an actor needs a CPU or a GPU")


@dataclass(frozen=True)
class DecodeStageConfig:
    num_cpus: float = 0.5     # per decode task
    batch_size: int = 2       # clips per decode task
    threads: int = 1          # decoder threads per clip
    # Cap on concurrent decode tasks (None: as many as the CPU shares allow). Fractional
    # shares pack more tasks than cores on small hosts, and they thrash.
    max_tasks: int | None = None

    def __post_init__(self) -> None:
        check(self.num_cpus > 0, "num_cpus", "must be > 0")
        check(self.batch_size > 0, "batch_size", "must be > 0")
        check(self.threads >= 0, "threads", "must be >= 0 (0: decoder's choice)")
        check(self.max_tasks is None or self.max_tasks > 0, "max_tasks", "must be > 0 or null")


@dataclass(frozen=True)
class ExtractConfig:
    output: str                                    # directory or s3:// prefix for the shards
    corpus: CorpusConfig
    encoders: EncodersConfig = field(default_factory=EncodersConfig)
    decode: DecodeStageConfig = field(default_factory=DecodeStageConfig)
    visual_pool: PoolConfig = field(default_factory=PoolConfig)
    audio_pool: PoolConfig = field(default_factory=PoolConfig)
    events_pool: PoolConfig = field(default_factory=PoolConfig)
    max_duration_s: float | None = 600.0          # explicit cap; cut clips are counted
    rows_per_shard: int = 32                       # clips per parquet file
    write_num_cpus: float = 0.1                    # per shard-writer task (mostly I/O)
    dtype: Literal["float16", "float32"] = "float16"
    retry_failed: bool = True                      # rerun: try previously failed clips again
    # One actor pool (visual_pool's settings) runs every encoder: one start-up instead of
    # one per pool. Faster on small CPU hosts; keep separate pools to scale towers apart.
    fuse_encoders: bool = False
    ray: jobs.RayConfig = field(default_factory=jobs.RayConfig)

    def __post_init__(self) -> None:
        check(bool(self.output), "output", "must name a directory or s3:// prefix")
        check(self.rows_per_shard > 0, "rows_per_shard", "must be > 0")
        check(self.write_num_cpus > 0, "write_num_cpus", "must be > 0")
        check(self.max_duration_s is None or self.max_duration_s > 0, "max_duration_s",
              "must be > 0 or null")


def load_clips(corpus: CorpusConfig) -> ManifestResult:
    """Manifest rows (validated; bad rows and missing local files become error rows)."""
    kwargs: dict[str, Any] = {"check_files": corpus.check_files, "limit": corpus.limit}
    if corpus.name == "manifest":
        load = jsonl.load_parquet if corpus.path.endswith(".parquet") else jsonl.load
        return dedupe(load(corpus.path, corpus.media_root, **kwargs))
    if corpus.name != "jsonl" and corpus.split:
        kwargs["split"] = corpus.split
    return build_manifest(corpus.name, metadata=corpus.path, media_root=corpus.media_root,
                          **kwargs)


def feature_metadata(cfg: ExtractConfig, frame_size: int) -> dict[str, Any]:
    """What a reader of the shards needs to know about the encoders (no weights loaded)."""
    from av_model.encoders import events_frame_rate, whisper_frame_rate

    enc = cfg.encoders
    meta = {"encoders": to_dict(enc), "frame_size": frame_size, "fps": enc.fps,
            "dtype": cfg.dtype, "audio_rate_hz": whisper_frame_rate(enc.audio.name_or_path),
            "audio_events_rate_hz": None}
    if enc.audio_events.name_or_path:
        meta["audio_events_rate_hz"] = events_frame_rate(enc.audio_events.name_or_path)
    return meta


def _pool_args(pool: PoolConfig) -> dict[str, Any]:
    from ray.data import ActorPoolStrategy

    return {"compute": ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size),
            "num_cpus": pool.num_cpus, "num_gpus": pool.num_gpus or None,
            "batch_size": pool.batch_size}


def decode_args(dec: DecodeStageConfig) -> dict[str, Any]:
    from ray.data import TaskPoolStrategy

    args: dict[str, Any] = {"batch_size": dec.batch_size, "num_cpus": dec.num_cpus}
    if dec.max_tasks:
        args["compute"] = TaskPoolStrategy(size=dec.max_tasks)
    return args


def _device(pool: PoolConfig) -> str:
    return "cuda" if pool.num_gpus > 0 else "cpu"


def decoded_dataset(cfg: ExtractConfig, rows: list[dict[str, Any]], decode: DecodeConfig):
    """Manifest rows → decoded clips: the job's front end (and the benchmark's decode-only)."""
    import ray.data

    from pipelines import extract_stages as st

    items = [{"clip_id": r["clip_id"], "uri": r["uri"], "manifest": json.dumps(r)} for r in rows]
    # One input block per decode batch (at most 200), so short runs still decode in parallel.
    blocks = max(1, min(200, math.ceil(len(items) / cfg.decode.batch_size)))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    return ds.map_batches(st.decode_batch, fn_kwargs={"decode": decode},
                          **decode_args(cfg.decode))


def build_dataset(cfg: ExtractConfig, rows: list[dict[str, Any]], decode: DecodeConfig,
                  metadata: dict[str, Any]):
    """The lazy Ray Data pipeline: one summary row per clip comes out of it."""
    from pipelines import extract_stages as st

    ds = decoded_dataset(cfg, rows, decode)
    enc, has_events = cfg.encoders, bool(cfg.encoders.audio_events.name_or_path)
    if cfg.fuse_encoders:
        ds = ds.map_batches(st.FusedEncodeStage, fn_constructor_kwargs={
            "visual": enc.visual, "audio": enc.audio,
            "events": enc.audio_events if has_events else None,
            "device": _device(cfg.visual_pool), "threads": cfg.visual_pool.threads},
            **_pool_args(cfg.visual_pool))
        return _add_writer(ds, cfg, metadata)
    ds = ds.map_batches(st.VisualStage, fn_constructor_kwargs={
        "cfg": enc.visual, "device": _device(cfg.visual_pool),
        "threads": cfg.visual_pool.threads}, **_pool_args(cfg.visual_pool))
    ds = ds.map_batches(st.AudioStage, fn_constructor_kwargs={
        "cfg": enc.audio, "device": _device(cfg.audio_pool), "threads": cfg.audio_pool.threads,
        "drop_input": not has_events}, **_pool_args(cfg.audio_pool))
    if has_events:
        ds = ds.map_batches(st.AudioEventStage, fn_constructor_kwargs={
            "cfg": enc.audio_events, "device": _device(cfg.events_pool),
            "threads": cfg.events_pool.threads}, **_pool_args(cfg.events_pool))
    return _add_writer(ds, cfg, metadata)


def _add_writer(ds, cfg: ExtractConfig, metadata: dict[str, Any]):
    from pipelines import extract_stages as st

    return ds.map_batches(st.write_batch, batch_size=cfg.rows_per_shard,
                          num_cpus=cfg.write_num_cpus,
                          fn_kwargs={"output": cfg.output, "fps": cfg.encoders.fps,
                                     "metadata": metadata, "dtype": cfg.dtype})


def pending_rows(cfg: ExtractConfig, manifest: ManifestResult) -> tuple[list[dict], int]:
    """Rows still to do: minus clips already written (and already failed, if asked)."""
    done = shards.written_clip_ids(cfg.output)
    if not cfg.retry_failed:
        done |= set(shards.read_errors(cfg.output).column("clip_id").to_pylist())
    rows = [r for r in manifest.rows if r["clip_id"] not in done]
    return rows, len(manifest.rows) - len(rows)


@dataclass
class Tally:
    """Running counts of the summary rows (kept small: no per-clip state on the driver)."""

    ok: int = 0
    truncated: int = 0
    media_s: float = 0.0
    failed: Counter = field(default_factory=Counter)

    def add(self, batch: dict[str, Any]) -> None:
        for err, dur, trunc in zip(batch["error"], batch["duration_s"], batch["truncated"]):
            if err:
                self.failed[str(err)] += 1
            else:
                self.ok += 1
                self.truncated += bool(trunc)
                self.media_s += float(dur)


def summarise(tally: Tally, skipped: int, manifest_errors: list[dict[str, str]],
              seconds: float) -> dict[str, Any]:
    """The job's summary; failures are counted by reason whatever stage caught them."""
    failed = dict(tally.failed + Counter(e["error"] for e in manifest_errors))
    done = tally.ok + sum(tally.failed.values())
    return {
        "clips_ok": tally.ok, "clips_failed": sum(failed.values()),
        "failed_by_reason": failed, "clips_skipped_existing": skipped,
        "clips_truncated": tally.truncated, "media_hours": round(tally.media_s / 3600.0, 4),
        "seconds": round(seconds, 2),
        "clips_per_s": round(done / seconds, 3) if seconds > 0 else 0.0,
    }


@dataclass(frozen=True)
class Plan:
    """What pre-flight settled before any Ray work: the decode contract and shard metadata."""

    decode: DecodeConfig
    metadata: dict[str, Any]


def plan(cfg: ExtractConfig) -> Plan:
    """Decode contract and shard metadata from the encoders' config files (no weights).

    Raises ConfigError naming the field for a hidden-layer index the tower does not have.
    """
    from av_model.encoders import visual_input_spec

    try:
        spec = visual_input_spec(cfg.encoders.visual)
    except ConfigError as err:
        raise ConfigError(f"encoders.visual.{err.field}", str(err).split(": ", 1)[1]) from None
    decode = DecodeConfig(fps=cfg.encoders.fps, frame_size=spec.image_size,
                          resize=cfg.encoders.resize, max_duration_s=cfg.max_duration_s,
                          threads=cfg.decode.threads)
    return Plan(decode, feature_metadata(cfg, spec.image_size))


def preflight(cfg: ExtractConfig) -> Plan:
    """Every check before Ray starts: ``plan`` plus an output that already holds shards from
    other feature settings is refused (a rerun must not mix feature spaces)."""
    jobs.check_durable_path("output", cfg.output)
    settled = plan(cfg)
    metadata = settled.metadata
    if storage.exists(storage.join(cfg.output, shards.FEATURES_DIR)):
        try:
            stored = shards.read_feature_metadata(cfg.output)
        except FileNotFoundError:
            stored = None
        if stored is not None and _identity(stored) != _identity(metadata):
            changed = sorted(k for k in metadata
                             if _identity(stored).get(k) != _identity(metadata)[k])
            raise ConfigError("output", f"{cfg.output} holds features from other settings "
                              f"({', '.join(changed)} differ); use a new output")
    return settled


_BATCHING_KEYS = ("frames_per_forward", "chunks_per_forward")


def _identity(meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata minus batching knobs: what two runs must share to write the same features."""
    encoders = {name: {k: v for k, v in part.items() if k not in _BATCHING_KEYS}
                if isinstance(part, dict) else part
                for name, part in meta.get("encoders", {}).items()}
    return {**meta, "encoders": encoders}


def run(cfg: ExtractConfig, checked: Plan | None = None) -> dict[str, Any]:
    """Execute the job (Ray must be initialised); returns the summary dict."""
    from ray.data import DataContext

    settled = checked or preflight(cfg)
    # Called inside another job's Ray session (quickstart, bench-model), this job's own
    # ray.progress_bars still holds: datasets take the current context when built.
    DataContext.get_current().enable_progress_bars = cfg.ray.progress_bars
    storage.makedirs(cfg.output)
    for sub in (shards.FEATURES_DIR, shards.ERRORS_DIR):
        storage.clean_temp_files(storage.join(cfg.output, sub))
    manifest = load_clips(cfg.corpus)
    shards.write_errors(cfg.output, manifest.errors)
    rows, skipped = pending_rows(cfg, manifest)
    log.info("%d clips to extract (%d already written, %d manifest errors) → %s",
             len(rows), skipped, len(manifest.errors), cfg.output)
    start = time.perf_counter()
    tally = Tally()
    if rows:
        ds = build_dataset(cfg, rows, settled.decode, settled.metadata)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            tally.add(batch)
    summary = summarise(tally, skipped, manifest.errors, time.perf_counter() - start)
    summary["duplicates_removed"] = shards.dedupe_features(cfg.output)
    summary["errors_table_rows"] = shards.consolidate_errors(cfg.output).num_rows
    storage.write_bytes_atomic(storage.join(cfg.output, "summary.json"),
                               json.dumps(summary, indent=2).encode())
    log.info("summary: %s", json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = jobs.parse_job_config(ExtractConfig, argv, __doc__)
    settled = jobs.checked(preflight, cfg)
    with jobs.ray_session(cfg.ray):
        summary = run(cfg, settled)
    nothing_usable = summary["clips_ok"] == 0 and summary["clips_skipped_existing"] == 0
    if nothing_usable and summary["clips_failed"] > 0:  # a scheduler must see this as failed
        log.error("every clip failed; see %s", storage.join(cfg.output, shards.ERRORS_DIR))
        raise SystemExit(1)
    return summary


if __name__ == "__main__":
    main()
