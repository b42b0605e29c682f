"""ACAV100M adapter: clip lists (YouTube id, start, end) → manifest rows.

Why: ACAV100M is the 100M-clip audio-visual correspondence corpus used for large-scale
audio-visual alignment. It ships only clip lists: windows of full YouTube videos, without
captions or labels. Lines are comma- or tab-separated, header optional::

    youtube_id,start,end
    -0DLPzsiXXE,30.0,40.0
    xJ8w3Gm_kU4,120.5,130.5

Media layout: full videos downloaded once per id, ``{media_root}/{youtube_id}.mp4``; the
decoder cuts ``[start_s, end_s)``, so several clips may share one file.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from typing import Iterator

from pipelines import storage
from pipelines.corpora.base import ManifestResult, check_media, error_row, manifest_row

log = logging.getLogger(__name__)

SOURCE = "acav100m"


def load(metadata: str, media_root: str, *, split: str | None = None,
         check_files: bool = True, limit: int | None = None) -> ManifestResult:
    """Read an ACAV100M clip list (CSV or TSV) into manifest rows.

    ``split`` labels every row (default ``"train"``); ``limit`` caps rows + errors produced.
    The delimiter is a tab when the first non-empty line holds one, else a comma.
    """
    result = ManifestResult()
    split = split or "train"
    with storage.open_input(metadata) as raw:
        lines = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        first_line, skipped = "", 0
        for first_line in lines:
            if first_line.strip():
                break
            skipped += 1
        delimiter = "\t" if "\t" in first_line else ","
        reader = csv.reader(_chain(first_line, lines), delimiter=delimiter)
        first = True
        for fields in reader:
            fields = [f.strip() for f in fields]
            if not any(fields):
                continue
            if first and len(fields) > 1 and not _is_float(fields[1]):
                first = False  # header such as "youtube_id,start,end"
                continue
            first = False
            if limit is not None and len(result.rows) + len(result.errors) >= limit:
                break
            _add_fields(result, fields, reader.line_num + skipped, metadata, media_root, split,
                        check_files)
    log.info("acav100m: %d rows, %d errors from %s", len(result.rows), len(result.errors),
             metadata)
    return result


def _chain(first_line: str, rest: Iterator[str]) -> Iterator[str]:
    """Yield the already-consumed first line, then the remaining lines."""
    if first_line:
        yield first_line
    yield from rest


def _is_float(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _add_fields(result: ManifestResult, fields: list[str], line: int, metadata: str,
                media_root: str, split: str, check_files: bool) -> None:
    """Turn one clip-list line into a manifest row (or a ``bad_metadata`` error row)."""
    ytid = fields[0]
    clip_id = f"{SOURCE}_{ytid}" if ytid else f"{SOURCE}_line{line}"
    try:
        if len(fields) < 3 or not ytid:
            raise ValueError("expected youtube_id, start, end")
        if not (_is_float(fields[1]) and _is_float(fields[2])):
            raise ValueError(f"start/end are not numbers: {fields[1]!r}, {fields[2]!r}")
        start, end = float(fields[1]), float(fields[2])
        if start < 0 or end <= start:
            raise ValueError(f"bad window: start={start} end={end}")
    except ValueError as err:
        result.errors.append(error_row(clip_id, metadata, "manifest", "bad_metadata",
                                       f"row {line} of {metadata}: {err}"))
        return
    row = manifest_row(f"acav_{ytid}_{start:.2f}_{end:.2f}",
                       storage.join(media_root, f"{ytid}.mp4"), SOURCE, split,
                       start_s=start, end_s=end)
    check_media(result, row, check_files)
