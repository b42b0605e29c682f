"""AudioCaps adapter: ``train.csv`` / ``val.csv`` / ``test.csv`` → captioned manifest rows.

Why: AudioCaps (human captions of 10 s AudioSet windows) is the audio-captioning corpus the
av-LLM papers train and evaluate on. Each split is its own CSV with a header::

    audiocap_id,youtube_id,start_time,caption
    91139,r1nicOVtvkQ,130,A woman talks nearby as water pours
    58146,UDGBjjwyaqE,20,Multiple clanging and clanking sounds

val/test hold 5 captions per clip (same youtube_id/start_time, different audiocap_id); they
stay separate rows, one per caption, with distinct clip_ids ``audiocaps_{audiocap_id}``.

Media layout: by default the full YouTube video ``{media_root}/{youtube_id}.mp4`` and the
window ``[start_time, start_time + 10)``. Other layouts are a ``filename_template`` away
(fields: youtube_id, start_time, audiocap_id), e.g. ``"{youtube_id}_{start_time}.mp4"``; for
files already cut to the window pass ``windowed=False`` (start_s=0, end_s=10).
"""

from __future__ import annotations

import logging
import math

from pipelines import storage
from pipelines.corpora.base import (ManifestResult, at_limit, check_media, csv_records,
                                    error_row, manifest_row)

log = logging.getLogger(__name__)

SOURCE = "audiocaps"
CLIP_SECONDS = 10.0
COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")


def load(metadata: str, media_root: str, *, split: str | None = None,
         check_files: bool = True, limit: int | None = None,
         filename_template: str = "{youtube_id}.mp4", windowed: bool = True) -> ManifestResult:
    """Read an AudioCaps split CSV into manifest rows (one per caption).

    ``split`` labels every row (default ``"train"``: AudioCaps ships one CSV per split);
    ``limit`` caps rows + errors produced. Raises ValueError for a CSV without the AudioCaps
    header or a ``filename_template`` with unknown fields.
    """
    try:
        filename_template.format(youtube_id="x", start_time=0, audiocap_id="0")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"bad filename_template {filename_template!r}: {err!r}") from err
    result = ManifestResult()
    split = split or "train"
    for line, rec in csv_records(metadata, COLUMNS, "AudioCaps"):
        if at_limit(result, limit):
            break
        row = _to_row(result, rec, line, metadata, media_root, split, filename_template,
                      windowed)
        if row is not None:
            check_media(result, row, check_files)
    log.info("audiocaps: %d rows, %d errors from %s", len(result.rows), len(result.errors),
             metadata)
    return result


def _to_row(result: ManifestResult, rec: dict[str, str | None], line: int, metadata: str,
            media_root: str, split: str, template: str, windowed: bool) -> dict | None:
    """One CSV record → a manifest row, or None after appending a ``bad_metadata`` error."""
    values = {c: (rec.get(c) or "").strip() for c in COLUMNS}
    cap_id = values["audiocap_id"]
    clip_id = f"{SOURCE}_{cap_id}" if cap_id else f"{SOURCE}_line{line}"
    try:
        empty = [c for c, v in values.items() if not v]
        if empty:
            raise ValueError(f"empty value for {', '.join(empty)}")
        start = float(values["start_time"])
        if not math.isfinite(start) or start < 0:
            raise ValueError(f"bad start_time {values['start_time']!r}")
        start_field: int | float = int(start) if start.is_integer() else start
        name = template.format(youtube_id=values["youtube_id"], start_time=start_field,
                               audiocap_id=cap_id)
    except ValueError as err:
        result.errors.append(error_row(clip_id, metadata, "manifest", "bad_metadata",
                                       f"row {line} of {metadata}: {err}"))
        return None
    start_s = start if windowed else 0.0
    return manifest_row(clip_id, storage.join(media_root, name), SOURCE, split,
                        start_s=start_s, end_s=start_s + CLIP_SECONDS, caption=values["caption"],
                        meta={"youtube_id": values["youtube_id"], "start_time": start})
