"""Our own evaluation format (``jsonl``) and the helpers every annotation adapter shares.

The ``jsonl`` format lets any dataset be evaluated without writing an adapter: convert it
once into JSON lines, one object per question::

    {"id": "q1", "video": "clips/a.mp4", "question": "What plays?", "answer": "a piano"}
    {"id": "q2", "image": "img/b.jpg", "audio": "/data/b.wav", "question": "Which one?",
     "references": ["left", "the left one"], "choices": ["left", "right"],
     "history": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}],
     "meta": {"family": "sync"}}

Keys: ``id`` (required), ``video`` / ``audio`` / ``image`` (optional media paths; relative
ones resolve under ``media_root``, absolute paths and ``s3://`` / ``file://`` URIs are kept),
``question`` (default ""), ``answer`` (one string) or ``references`` (a list), ``choices``,
``history`` and ``meta`` (an object). A malformed line is skipped with a warning.

The helpers (``collect``, ``take_options``, ``read_json``, ...) keep the adapters to the
dataset-specific part: a wrong file is a ValueError naming it, a bad record a warning.
"""

from __future__ import annotations

import io
import json
import logging
import os
from typing import Any, Callable, Iterable, Iterator

from pipelines import storage
from pipelines.eval_tasks.base import AnnotationSource, item

log = logging.getLogger(__name__)

MEDIA_KEYS = ("video", "audio", "image")
_RECORD_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError)


def collect(task: str, uri: str, records: Iterable[tuple[str, Any]],
            make: Callable[[Any], dict[str, Any] | list[dict[str, Any]] | None],
            logger: logging.Logger) -> list[dict[str, Any]]:
    """``make`` each record into items; a malformed record is logged and skipped.

    ``records`` are (where, record) pairs, ``where`` saying e.g. "line 7" for the warning;
    ``make`` returns one item, a list of items, or None for a record deliberately left out.
    """
    items: list[dict[str, Any]] = []
    skipped = 0
    for where, rec in records:
        try:
            built = make(rec)
        except _RECORD_ERRORS as err:
            skipped += 1
            reason = f"missing key {err}" if isinstance(err, KeyError) else str(err)
            logger.warning("%s: skipping %s of %s: %s", task, where, uri, reason)
            continue
        if isinstance(built, list):
            items.extend(built)
        elif built is not None:
            items.append(built)
    logger.info("%s: %d items (%d malformed records skipped) from %s", task, len(items),
                skipped, uri)
    return items


def take_options(task: str, src: AnnotationSource, defaults: dict[str, Any]) -> dict[str, Any]:
    """``src.options`` over ``defaults``; an option the adapter does not know is a ValueError."""
    unknown = sorted(set(src.options) - set(defaults))
    if unknown:
        raise ValueError(f"{task} adapter: unknown options {unknown} (known: {sorted(defaults)})")
    return {**defaults, **src.options}


def read_json(uri: str) -> Any:
    """A whole JSON document; a file that is not JSON is a ValueError naming it."""
    with storage.open_input(uri) as raw:
        data = raw.read()
    try:
        return json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{uri}: not a JSON file ({err})") from err


def json_list_records(uri: str, key: str, what: str) -> Iterator[tuple[str, Any]]:
    """(``key[i]``, record) pairs of the list under ``key`` of a JSON document; a document
    without that list is a ValueError naming the file and the format expected."""
    data = read_json(uri)
    records = data.get(key) if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise ValueError(f"{uri}: not {what} (no '{key}' list)")
    return ((f"{key}[{i}]", rec) for i, rec in enumerate(records))


def text_lines(uri: str) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) of a UTF-8 text file, blank lines left out."""
    with storage.open_input(uri) as raw:
        for number, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8-sig"), start=1):
            line = line.strip()
            if line:
                yield number, line


def text_field(rec: dict[str, Any], key: str) -> str:
    """``rec[key]`` as a non-empty stripped string (numbers allowed), else ValueError."""
    value = rec[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{key!r} must be a string, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise ValueError(f"empty {key!r}")
    return text


def media_path(src: AnnotationSource, path: str) -> str:
    """A media path from an annotation: URIs and absolute paths kept, others under media_root."""
    if storage.is_s3(path) or path.startswith("file://") or os.path.isabs(path):
        return path
    return src.media(path)


def json_object_lines(task: str, src: AnnotationSource,
                      make: Callable[[dict[str, Any]], dict[str, Any]]) -> list[dict[str, Any]]:
    """A JSON-lines annotation file, one object per line → ``make(object)`` per line (a line
    that is not an object, or that ``make`` rejects, is skipped with a warning)."""
    def one(text: str) -> dict[str, Any]:
        rec = json.loads(text)
        if not isinstance(rec, dict):
            raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
        return make(rec)

    lines = ((f"line {n}", text) for n, text in text_lines(src.annotations))
    return collect(task, src.annotations, lines, one, log)


def load_jsonl(src: AnnotationSource) -> list[dict[str, Any]]:
    """Our JSON-lines format (module docstring) → one item per line."""
    take_options("jsonl", src, {})
    return json_object_lines("jsonl", src, lambda rec: _jsonl_item(src, rec))


def _jsonl_item(src: AnnotationSource, rec: dict[str, Any]) -> dict[str, Any]:
    if "references" in rec:
        refs = rec["references"]
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            raise ValueError("'references' must be a list of strings")
    else:
        refs = [text_field(rec, "answer")]
    media = {}
    for key in MEDIA_KEYS:
        if rec.get(key) is not None:
            media[key] = media_path(src, text_field(rec, key))
    meta = rec.get("meta") or {}
    if not isinstance(meta, dict):
        raise ValueError("'meta' must be a JSON object")
    return item(text_field(rec, "id"), references=refs, question=str(rec.get("question") or ""),
                choices=_str_list(rec.get("choices") or [], "choices"),
                history=_history(rec.get("history") or []), meta=meta, **media)


def _history(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not all(
            isinstance(t, dict) and isinstance(t.get("role"), str)
            and isinstance(t.get("content"), str) for t in value):
        raise ValueError("'history' must be a list of {role, content} objects")
    return value


def _str_list(value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key!r} must be a list of strings")
    return value
