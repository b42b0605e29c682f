"""JSON-lines adapter: any corpus already in (nearly) manifest form → manifest rows.

Why: instruction-tuning sets (LLaVA/Video-ChatGPT-style conversations, in-house QA) and
one-off corpora need no dedicated adapter; one JSON object per line is enough::

    {"clip_id": "qa_0001", "video": "clips/-0DLPzsiXXE.mp4", "start_s": 0, "end_s": 8.5,
     "conversations": [{"role": "user", "content": "<AUD_VIS> What plays?"},
                       {"role": "assistant", "content": "A violin."}]}

Required: ``clip_id`` and ``uri`` (``video`` and ``path`` are aliases). Optional: start_s,
end_s, source (default "jsonl"), split (default "train"), caption, labels, conversations
(roles system/user/assistant, string content), meta (object). Other keys go into meta.
A relative uri is resolved against ``media_root``, else the JSONL file's directory.
A line that is not valid JSON or breaks these rules becomes a ``bad_metadata`` error row.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import posixpath
from typing import Any, Iterable, Iterator

from pipelines import storage
from pipelines.corpora.base import ManifestResult, check_media, error_row, manifest_row

log = logging.getLogger(__name__)

URI_KEYS = ("uri", "video", "path")
ROLES = {"system", "user", "assistant"}
_KNOWN = {"clip_id", "start_s", "end_s", "source", "split", "caption", "labels",
          "conversations", "meta"}


def load(metadata: str, media_root: str | None = None, *, check_files: bool = True,
         limit: int | None = None) -> ManifestResult:
    """Read a JSONL manifest-like file into manifest rows; ``limit`` caps rows + errors."""
    with storage.open_input(metadata) as raw:
        lines = io.TextIOWrapper(raw, encoding="utf-8-sig")
        result = load_records(_json_objects(lines), metadata, media_root, check_files=check_files,
                              limit=limit)
    log.info("jsonl: %d rows, %d errors from %s", len(result.rows), len(result.errors), metadata)
    return result


def load_parquet(metadata: str, media_root: str | None = None, *, check_files: bool = True,
                 limit: int | None = None) -> ManifestResult:
    """A parquet manifest, validated row by row like JSONL (NaN counts as missing)."""
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(metadata)
    records = ((i, _nan_to_none(r)) for i, r in
               enumerate(pq.read_table(path, filesystem=fs).to_pylist(), start=1))
    return load_records(records, metadata, media_root, check_files=check_files, limit=limit)


def load_records(records: Iterable[tuple[int, Any]], origin: str, media_root: str | None, *,
                 check_files: bool = True, limit: int | None = None) -> ManifestResult:
    """(row number, object) pairs → manifest rows, or bad_metadata errors naming the row."""
    base = media_root if media_root is not None else _parent(origin)
    result = ManifestResult()
    for line_no, obj in records:
        if limit is not None and len(result.rows) + len(result.errors) >= limit:
            break
        try:
            if isinstance(obj, Exception):
                raise obj
            if not isinstance(obj, dict):
                raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
            row = _to_row(obj, base)
        except ValueError as err:  # json.JSONDecodeError is a ValueError
            clip_id = obj.get("clip_id") if isinstance(obj, dict) else None
            result.errors.append(error_row(
                str(clip_id or f"jsonl_line{line_no}"), origin, "manifest",
                "bad_metadata", f"line {line_no} of {origin}: {err}"))
            continue
        check_media(result, row, check_files)
    return result


def _json_objects(lines: Iterable[str]) -> Iterator[tuple[int, Any]]:
    for line_no, line in enumerate(lines, start=1):
        if line.strip():
            try:
                yield line_no, json.loads(line)
            except ValueError as err:
                yield line_no, err


def _nan_to_none(record: dict[str, Any]) -> dict[str, Any]:
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in record.items()}


def _parent(uri: str) -> str:
    """The directory holding ``uri`` (kept as a URI for s3:// and file://)."""
    if storage.is_s3(uri) or str(uri).startswith("file://"):
        return str(uri).rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(uri))


def _resolve(uri: str, base: str) -> str:
    if "://" in uri or os.path.isabs(uri):
        return uri
    return storage.join(base, posixpath.normpath(uri))


def _to_row(obj: dict[str, Any], base: str) -> dict[str, Any]:
    """Validate one object and build its manifest row; ValueError names the problem."""
    clip_id = obj.get("clip_id")
    if not isinstance(clip_id, (str, int)) or isinstance(clip_id, bool) or clip_id == "":
        raise ValueError("missing or invalid clip_id")
    uri_key = next((k for k in URI_KEYS if k in obj), None)
    if uri_key is None or not isinstance(obj[uri_key], str) or not obj[uri_key]:
        raise ValueError("missing uri (or its aliases video/path)")
    start_s, end_s = _number(obj, "start_s"), _number(obj, "end_s")
    if start_s is not None and end_s is not None and end_s <= start_s:
        raise ValueError(f"end_s {end_s} <= start_s {start_s}")
    for key in ("source", "split", "caption"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise ValueError(f"{key} must be a string")
    labels = obj.get("labels")
    if labels is not None and not (isinstance(labels, list)
                                   and all(isinstance(x, str) for x in labels)):
        raise ValueError("labels must be a list of strings")
    meta = obj.get("meta")
    if isinstance(meta, str):  # manifests written by avray hold meta as JSON text
        try:
            meta = json.loads(meta)
        except ValueError as err:
            raise ValueError(f"meta is not valid JSON: {err}") from None
    if meta is not None and not isinstance(meta, dict):
        raise ValueError("meta must be an object")
    extras = {k: v for k, v in obj.items() if k not in _KNOWN and k != uri_key}
    merged = {**extras, **(meta or {})} or None
    return manifest_row(str(clip_id), _resolve(obj[uri_key], base), obj.get("source") or "jsonl",
                        obj.get("split") or "train", start_s=start_s, end_s=end_s,
                        caption=obj.get("caption"), labels=labels,
                        conversations=_conversations(obj.get("conversations")), meta=merged)


def _number(obj: dict[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{key} must be a non-negative number, got {value!r}")
    return float(value)


def _conversations(turns: Any) -> list[dict[str, str]] | None:
    if turns is None:
        return None
    if not isinstance(turns, list) or not turns:
        raise ValueError("conversations must be a non-empty list of {role, content}")
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("role") not in ROLES \
                or not isinstance(turn.get("content"), str):
            raise ValueError(f"conversations[{i}] needs role in {sorted(ROLES)} and string "
                             f"content, got {turn!r}")
    return [{"role": t["role"], "content": t["content"]} for t in turns]
