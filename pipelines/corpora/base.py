"""The manifest contract (DESIGN §3): one row schema for every corpus, plus error rows.

Manifest row keys:
    clip_id (str, unique) · uri (local path, file://, s3://) · start_s, end_s (float|None)
    source (str) · split (str) · caption (str|None) · labels (list[str]|None)
    conversations (list[{role, content}]|None) · meta (str|None: JSON with corpus-specific
    extras, e.g. the synthetic corpus's event timeline and QA list)

Error row keys (shared with the feature-extraction errors table):
    clip_id · uri · stage · error (a short reason code) · message (human readable)

Adapters never crash on a bad metadata row or a missing media file: they turn it into an
error row and go on, so one broken line cannot sink a 10-million-row ingest.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq

from pipelines import storage

MANIFEST_SCHEMA = pa.schema([
    ("clip_id", pa.string()),
    ("uri", pa.string()),
    ("start_s", pa.float64()),
    ("end_s", pa.float64()),
    ("source", pa.string()),
    ("split", pa.string()),
    ("caption", pa.string()),
    ("labels", pa.list_(pa.string())),
    ("conversations", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ("meta", pa.string()),
])

ERROR_SCHEMA = pa.schema([
    ("clip_id", pa.string()),
    ("uri", pa.string()),
    ("stage", pa.string()),
    ("error", pa.string()),
    ("message", pa.string()),
])

MANIFEST_KEYS = tuple(MANIFEST_SCHEMA.names)


def manifest_row(clip_id: str, uri: str, source: str, split: str = "train", *,
                 start_s: float | None = None, end_s: float | None = None,
                 caption: str | None = None, labels: list[str] | None = None,
                 conversations: list[dict[str, str]] | None = None,
                 meta: dict[str, Any] | str | None = None) -> dict[str, Any]:
    """Build one manifest row with every key present (absent supervision is None)."""
    if isinstance(meta, dict):
        meta = json.dumps(meta, sort_keys=True)
    return {
        "clip_id": str(clip_id), "uri": str(uri),
        "start_s": None if start_s is None else float(start_s),
        "end_s": None if end_s is None else float(end_s),
        "source": source, "split": split, "caption": caption, "labels": labels,
        "conversations": conversations, "meta": meta,
    }


def error_row(clip_id: str, uri: str, stage: str, error: str, message: str) -> dict[str, str]:
    return {"clip_id": str(clip_id), "uri": str(uri), "stage": stage,
            "error": error, "message": message}


@dataclass
class ManifestResult:
    """What an adapter returns: good rows and the rows it could not use, with reasons."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)


def csv_records(metadata: str, columns: Iterable[str], corpus: str
                ) -> Iterator[tuple[int, dict[str, str | None]]]:
    """(line number, record) pairs of a headed CSV, streamed (metadata files can be huge).

    A header without the corpus's columns means the wrong file, not a bad row: ValueError.
    """
    with storage.open_input(metadata) as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""))
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{metadata}: not a {corpus} CSV, header lacks {missing}")
        for rec in reader:
            yield reader.line_num, rec


def at_limit(result: "ManifestResult", limit: int | None) -> bool:
    """True once ``limit`` rows + errors have been produced (``limit`` None: never)."""
    return limit is not None and len(result.rows) + len(result.errors) >= limit


def check_media(result: ManifestResult, row: dict[str, Any], check_files: bool) -> None:
    """Append ``row`` to result, or an error row when its local media file is missing."""
    uri = row["uri"]
    if check_files and not storage.is_s3(uri) and not os.path.isfile(storage.local_path(uri)):
        result.errors.append(error_row(row["clip_id"], uri, "manifest", "missing_file",
                                       f"media file not found: {uri}"))
        return
    result.rows.append(row)


def dedupe(result: ManifestResult) -> ManifestResult:
    """Keep the first row per clip_id; later duplicates become error rows."""
    seen: set[str] = set()
    out = ManifestResult(errors=list(result.errors))
    for row in result.rows:
        if row["clip_id"] in seen:
            out.errors.append(error_row(row["clip_id"], row["uri"], "manifest", "duplicate_clip_id",
                                        f"clip_id {row['clip_id']!r} appears more than once"))
            continue
        seen.add(row["clip_id"])
        out.rows.append(row)
    return out


def rows_to_table(rows: Iterable[dict[str, Any]], schema: pa.Schema = MANIFEST_SCHEMA) -> pa.Table:
    rows = list(rows)
    return pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)


def write_manifest(rows: Iterable[dict[str, Any]], uri: str) -> str:
    """Write a manifest as parquet (``.parquet``) or JSON lines (anything else)."""
    rows = list(rows)
    if str(uri).endswith(".parquet"):
        storage.write_parquet(rows_to_table(rows), uri)
    else:
        text = "".join(json.dumps({k: r.get(k) for k in MANIFEST_KEYS}) + "\n" for r in rows)
        storage.write_bytes_atomic(uri, text.encode())
    return uri


def read_manifest(uri: str) -> list[dict[str, Any]]:
    """Read a parquet or JSONL manifest into rows with every manifest key present."""
    fs, path = storage.filesystem(uri)
    if str(uri).endswith(".parquet"):
        table = pq.read_table(path, filesystem=fs)
    else:
        with storage.open_input(uri) as f:
            raw = f.read()
        table = pajson.read_json(io.BytesIO(raw)) if raw.strip() else pa.table({})
    rows = table.to_pylist()
    return [manifest_row(**{k: r.get(k) for k in MANIFEST_KEYS if k in r}) for r in rows]
