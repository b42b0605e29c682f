"""Feature shards and the errors table on disk (DESIGN §3), written exactly once per clip.

Layout under an extraction output URI:

    features/part-<uuid>.parquet   one row per clip: ids, durations, Ray Data tensor columns
                                   video (T×Nv×Dv), audio (A×Da), [audio_events (E×De)],
                                   supervision columns; encoder identities in the metadata
    errors/errors.parquet          one row per clip that failed (clip_id, uri, stage, error,
                                   message); part files of a run are folded into it at the end
    summary.json                   the last run's counts

Why our own writer instead of ``Dataset.write_parquet``: a shard must appear whole or not
at all (temp name + rename locally; S3 objects appear on upload completion), so a run
killed midway and rerun leaves every clip exactly once, and failed clips go to a separate
table in the same pass.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from ray.data.extensions import ArrowVariableShapedTensorArray

from pipelines import storage
from pipelines.corpora.base import ERROR_SCHEMA, MANIFEST_SCHEMA

FEATURES_DIR, ERRORS_DIR, ERRORS_FILE = "features", "errors", "errors.parquet"
METADATA_KEY = b"avray.features"
TENSOR_COLUMNS = ("video", "audio", "audio_events")
_SUPERVISION = ("caption", "labels", "conversations", "meta")

FEATURE_FIELDS = [
    ("clip_id", pa.string()), ("source", pa.string()), ("split", pa.string()),
    ("uri", pa.string()), ("start_s", pa.float64()),
    ("duration_s", pa.float64()), ("fps", pa.float64()), ("truncated", pa.bool_()),
    ("has_video", pa.bool_()), ("has_audio", pa.bool_()),
] + [(name, MANIFEST_SCHEMA.field(name).type) for name in _SUPERVISION]


def _tensor_column(arrays: list[np.ndarray], dtype: str) -> pa.Array:
    return ArrowVariableShapedTensorArray.from_numpy([np.asarray(a, dtype=dtype) for a in arrays])


def feature_table(rows: list[dict[str, Any]], metadata: dict[str, Any],
                  dtype: str = "float16") -> pa.Table:
    """Rows (scalar fields + numpy feature arrays) → an Arrow table with tensor columns."""
    columns = {name: pa.array([r.get(name) for r in rows], type=tp) for name, tp in FEATURE_FIELDS}
    for name in TENSOR_COLUMNS:
        if name in rows[0]:
            columns[name] = _tensor_column([r[name] for r in rows], dtype)
    table = pa.table(columns)
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True)})


def _part_name() -> str:
    """Names sort by creation time, so "first file wins" and "newest error wins" hold."""
    return f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.parquet"


def _shard_files(directory: str) -> list[str]:
    """Complete parquet files in a directory (temp files of unfinished writes excluded)."""
    return [f for f in storage.list_files(directory, ".parquet")
            if not f.rsplit("/", 1)[-1].startswith((".", "_"))]


def write_features(output: str, rows: list[dict[str, Any]], metadata: dict[str, Any],
                   dtype: str = "float16") -> str | None:
    if not rows:
        return None
    return storage.write_parquet(feature_table(rows, metadata, dtype),
                        storage.join(output, FEATURES_DIR, _part_name()))


def write_errors(output: str, rows: list[dict[str, str]]) -> str | None:
    if not rows:
        return None
    table = pa.Table.from_pylist([{k: r.get(k) for k in ERROR_SCHEMA.names} for r in rows],
                                 schema=ERROR_SCHEMA)
    return storage.write_parquet(table, storage.join(output, ERRORS_DIR, _part_name()))


def _read_dir(uri: str, columns: list[str] | None = None) -> pa.Table | None:
    files = _shard_files(uri)
    if not files:
        return None
    fs, _ = storage.filesystem(uri)
    paths = [storage.filesystem(f)[1] for f in files]
    return pads.dataset(paths, filesystem=fs, format="parquet").to_table(columns=columns)


def written_clip_ids(output: str) -> set[str]:
    """clip_ids already present in the feature shards (what a rerun skips)."""
    table = _read_dir(storage.join(output, FEATURES_DIR), ["clip_id"])
    return set() if table is None else set(table.column("clip_id").to_pylist())


def split_counts(output: str) -> dict[str, int]:
    """Rows per ``split`` in the feature shards (one column read: cheap on large corpora)."""
    table = _read_dir(storage.join(output, FEATURES_DIR), ["split"])
    if table is None:
        return {}
    counts = table.column("split").value_counts().to_pylist()
    return {str(c["values"]): int(c["counts"]) for c in counts}


def dedupe_features(output: str) -> int:
    """Drop repeated clip_ids across shards (first file in name order wins); return the count.

    A killed job's workers can outlive its driver by a moment and finish one last shard
    after a rerun has started; every run ends with this pass so each clip is stored once.
    Only shards holding a repeat are rewritten (atomically), so the usual cost is reading
    the clip_id column.
    """
    files = _shard_files(storage.join(output, FEATURES_DIR))
    seen: set[str] = set()
    removed = 0
    for uri in files:
        fs, path = storage.filesystem(uri)
        ids = pq.read_table(path, filesystem=fs, columns=["clip_id"]).column("clip_id").to_pylist()
        repeats = [i for i, cid in enumerate(ids) if cid in seen]
        seen.update(ids)
        if not repeats:
            continue
        table = pq.read_table(path, filesystem=fs)
        keep = np.setdiff1d(np.arange(len(ids)), repeats)
        removed += len(repeats)
        if len(keep):
            storage.write_parquet(table.take(pa.array(keep)).replace_schema_metadata(table.schema.metadata), uri)
        else:
            storage.delete(uri)
    return removed


def read_errors(output: str) -> pa.Table:
    table = _read_dir(storage.join(output, ERRORS_DIR))
    return ERROR_SCHEMA.empty_table() if table is None else table.select(ERROR_SCHEMA.names)


def consolidate_errors(output: str) -> pa.Table:
    """Fold error parts into errors.parquet: one row per clip still failing, newest reason.

    Order matters: the previous consolidated file is read first and this run's parts after
    it, so the last row per clip_id is the newest. Clips that have since succeeded drop out.
    """
    err_dir = storage.join(output, ERRORS_DIR)
    main_file = storage.join(err_dir, ERRORS_FILE)
    parts = [f for f in _shard_files(err_dir) if f.rsplit("/", 1)[-1] != ERRORS_FILE]
    tables = []
    for uri in ([main_file] if storage.exists(main_file) else []) + parts:
        fs, path = storage.filesystem(uri)
        tables.append(pq.read_table(path, filesystem=fs).select(ERROR_SCHEMA.names))
    if not tables:
        return ERROR_SCHEMA.empty_table()
    rows = pa.concat_tables(tables).to_pylist()
    latest = {r["clip_id"]: r for r in rows}
    done = written_clip_ids(output)
    kept = [r for cid, r in latest.items() if cid not in done]
    table = pa.Table.from_pylist(kept, schema=ERROR_SCHEMA)
    storage.write_parquet(table, main_file)
    for uri in parts:
        storage.delete(uri)
    return table


def read_feature_metadata(output: str) -> dict[str, Any]:
    """Encoder identities and dims stored in the shards' parquet metadata."""
    files = _shard_files(storage.join(output, FEATURES_DIR))
    if not files:
        raise FileNotFoundError(f"no feature shards under {output}")
    fs, path = storage.filesystem(files[0])
    meta = pq.read_schema(path, filesystem=fs).metadata or {}
    return json.loads(meta[METADATA_KEY])
