"""VGGSound adapter: the official ``vggsound.csv`` → manifest rows with one label each.

Why: VGGSound (200k 10 s YouTube clips, 309 sound classes) is the audio-visual event corpus
the av-LLM papers use for audio-visual classification and captioning. The official CSV has
no header; labels may hold commas and are then quoted::

    -0DLPzsiXXE,30,people marching,train
    ---g-f_I2yQ,1,"people marching, crowd cheering",test

Columns: youtube_id, start_seconds (int), label, split (train/test). A header row, if a
re-exported copy has one, is skipped.

Media layout: the released / community-downloaded files are already cut to the 10 s window
that starts at ``start_seconds`` and named ``{youtube_id}_{start:06d}.mp4``, so every row
points at ``{media_root}/{youtube_id}_{start:06d}.mp4`` with start_s=0.0 and end_s=10.0.
"""

from __future__ import annotations

import csv
import io
import logging

from pipelines import storage
from pipelines.corpora.base import ManifestResult, check_media, error_row, manifest_row

log = logging.getLogger(__name__)

SOURCE = "vggsound"
CLIP_SECONDS = 10.0
_HEADER_STARTS = {"start_seconds", "start_second", "start", "start_time", "start_s", "# start"}


def load(metadata: str, media_root: str, *, split: str | None = None,
         check_files: bool = True, limit: int | None = None) -> ManifestResult:
    """Read ``vggsound.csv`` into manifest rows.

    ``split`` (``"train"``/``"test"``), if given, keeps only the rows of that split; the
    row's own split column is written either way. ``limit`` caps rows + errors produced.
    """
    result = ManifestResult()
    with storage.open_input(metadata) as raw:
        reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""))
        first = True
        for fields in reader:
            if not fields or not any(f.strip() for f in fields):
                continue
            fields = [f.strip() for f in fields]
            if first and len(fields) > 1 and fields[1].lower() in _HEADER_STARTS:
                first = False
                continue
            first = False
            if split is not None and len(fields) == 4 and fields[3] != split:
                continue
            if limit is not None and len(result.rows) + len(result.errors) >= limit:
                break
            _add_fields(result, fields, reader.line_num, metadata, media_root, check_files)
    log.info("vggsound: %d rows, %d errors from %s", len(result.rows), len(result.errors),
             metadata)
    return result


def _add_fields(result: ManifestResult, fields: list[str], line: int, metadata: str,
                media_root: str, check_files: bool) -> None:
    """Turn one CSV line into a manifest row (or a ``bad_metadata`` error row)."""
    ytid = fields[0]
    clip_id = f"{SOURCE}_{ytid}" if ytid else f"{SOURCE}_line{line}"
    try:
        if len(fields) != 4:
            raise ValueError(f"expected 4 columns (youtube_id,start_seconds,label,split), "
                             f"got {len(fields)}")
        ytid, start_text, label, row_split = fields
        empty = [n for n, v in zip(("youtube_id", "label", "split"), (ytid, label, row_split))
                 if not v]
        if empty:
            raise ValueError(f"empty value for {', '.join(empty)}")
        start = int(start_text)
        if start < 0:
            raise ValueError(f"negative start_seconds {start}")
    except ValueError as err:
        result.errors.append(error_row(clip_id, metadata, "manifest", "bad_metadata",
                                       f"row {line} of {metadata}: {err}"))
        return
    name = f"{ytid}_{start:06d}"
    row = manifest_row(f"{SOURCE}_{name}", storage.join(media_root, f"{name}.mp4"), SOURCE,
                       row_split, start_s=0.0, end_s=CLIP_SECONDS, labels=[label],
                       meta={"youtube_id": ytid, "start_seconds": start})
    check_media(result, row, check_files)
