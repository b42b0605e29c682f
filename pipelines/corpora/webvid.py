"""WebVid (2M / 10M) adapter: the released results CSV → manifest rows.

Why: WebVid's stock-footage captions are the video-text alignment corpus of the Video-LLaMA /
FAVOR family. The CSV is its only metadata; download scripts (the official one, video2dataset)
store one mp4 per ``videoid`` under the ``page_dir`` folder, so the layout is
``{media_root}/{page_dir}/{videoid}.mp4``.

Metadata (header required, as released)::

    videoid,name,page_idx,page_dir,duration,contentUrl
    1053841541,Travel blogger shoot a story ...,27732,027701_027750,PT00H00M17S,https://ak.picdn.net/...

``duration`` is ISO-8601 (``PT00H00M17S``; seconds may be fractional). A row with an empty
field or an unparsable duration becomes a ``bad_metadata`` error row naming its line
(the header is line 1), never an exception.
"""

from __future__ import annotations

import logging
import re

from pipelines import storage
from pipelines.corpora.base import (ManifestResult, at_limit, check_media, csv_records,
                                    error_row, manifest_row)

log = logging.getLogger(__name__)

SOURCE = "webvid"
COLUMNS = ("videoid", "name", "page_idx", "page_dir", "duration", "contentUrl")
_NUM = r"(\d+(?:\.\d+)?)"
_ISO_DURATION = re.compile(rf"P(?:{_NUM}D)?T(?:{_NUM}H)?(?:{_NUM}M)?(?:{_NUM}S)?")


def parse_iso_duration(text: str) -> float:
    """Seconds in an ISO-8601 duration such as ``PT00H00M17S`` or ``PT1M2.5S``.

    Raises ValueError for anything else (so the caller can record a ``bad_metadata`` row).
    """
    match = _ISO_DURATION.fullmatch(text.strip())
    if match is None or not any(match.groups()):
        raise ValueError(f"not an ISO-8601 duration: {text!r}")
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def load(metadata: str, media_root: str, *, split: str | None = None,
         check_files: bool = True, limit: int | None = None) -> ManifestResult:
    """Read a WebVid CSV into manifest rows (clip = the whole video, caption = ``name``).

    ``split`` labels every row (default ``"train"``); ``check_files`` turns rows whose local
    mp4 is absent into ``missing_file`` errors; ``limit`` caps rows + errors produced.
    """
    result = ManifestResult()
    split = split or "train"
    for line, rec in csv_records(metadata, COLUMNS, "WebVid"):
        if at_limit(result, limit):
            break
        _add_record(result, rec, line, metadata, media_root, split, check_files)
    log.info("webvid: %d rows, %d errors from %s", len(result.rows), len(result.errors), metadata)
    return result


def _add_record(result: ManifestResult, rec: dict[str, str | None], line: int, metadata: str,
                media_root: str, split: str, check_files: bool) -> None:
    """Turn one CSV record into a manifest row (or a ``bad_metadata`` error row)."""
    videoid = (rec.get("videoid") or "").strip()
    clip_id = f"{SOURCE}_{videoid}" if videoid else f"{SOURCE}_line{line}"
    empty = [c for c in COLUMNS if not (rec.get(c) or "").strip()]
    try:
        if empty:
            raise ValueError(f"empty value for {', '.join(empty)}")
        duration = parse_iso_duration(rec["duration"] or "")
        page_idx = int(rec["page_idx"] or "")
    except ValueError as err:
        result.errors.append(error_row(clip_id, metadata, "manifest", "bad_metadata",
                                       f"row {line} of {metadata}: {err}"))
        return
    uri = storage.join(media_root, (rec["page_dir"] or "").strip(), f"{videoid}.mp4")
    row = manifest_row(clip_id, uri, SOURCE, split, start_s=0.0, end_s=duration,
                       caption=(rec["name"] or "").strip(),
                       meta={"content_url": rec["contentUrl"], "page_idx": page_idx})
    check_media(result, row, check_files)
