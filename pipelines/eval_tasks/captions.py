"""Captioning tasks: AudioCaps (audio captioning) and Flickr30k (image captioning).

AudioCaps (github.com/cdjkim/audiocaps, ``dataset/test.csv``): a headed CSV
``audiocap_id,youtube_id,start_time,caption`` whose val/test splits hold ~5 captions per
clip, one row each. They are grouped into one item per ``youtube_id`` (id = youtube_id)
with every caption a reference. The audio file is ``media_root/{youtube_id}.<ext>``
(option ``ext``, default "wav"), or option ``pattern`` with fields ``youtube_id`` and
``start_time`` for other layouts, e.g. ``"Y{youtube_id}.wav"`` or
``"{youtube_id}_{start_time}.wav"``.

Flickr30k (Karpathy split, ``dataset_flickr30k.json`` from cs.stanford.edu/people/karpathy/
deepimagesent): ``{"images": [{"filename", "split", "imgid", "sentences": [{"raw"}, ...]}]}``
with five sentences per image. ``split`` keeps one split (default "test": 1000 images);
image = ``media_root/<filename>`` (the ``flickr30k-images`` folder), id = the file stem.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from pipelines.corpora.audiocaps import COLUMNS as AUDIOCAPS_COLUMNS
from pipelines.corpora.base import csv_records
from pipelines.eval_tasks.base import AnnotationSource, item
from pipelines.eval_tasks.generic import collect, json_list_records, take_options, text_field

log = logging.getLogger(__name__)


# --- AudioCaps --------------------------------------------------------------------------

def load_audiocaps(src: AnnotationSource) -> list[dict[str, Any]]:
    """One item per clip with all of its captions as references."""
    opts = take_options("audiocaps", src, {"ext": "wav", "pattern": None})
    pattern = opts["pattern"] or "{youtube_id}." + str(opts["ext"])
    try:
        pattern.format(youtube_id="x", start_time=0)
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"audiocaps adapter: bad pattern {pattern!r} (fields: youtube_id, "
                         f"start_time): {err!r}") from err
    clips: dict[str, dict[str, Any]] = {}
    for line, rec in csv_records(src.annotations, AUDIOCAPS_COLUMNS, "AudioCaps"):
        try:
            _add_caption(clips, rec)
        except ValueError as err:
            log.warning("audiocaps: skipping line %d of %s: %s", line, src.annotations, err)
    items = [item(ytid, references=clip["captions"],
                  audio=src.media(pattern.format(youtube_id=ytid, start_time=clip["start"])),
                  meta={"youtube_id": ytid, "start_time": clip["start"],
                        "audiocap_ids": clip["ids"]})
             for ytid, clip in clips.items()]
    log.info("audiocaps: %d clips from %s", len(items), src.annotations)
    return items


def _add_caption(clips: dict[str, dict[str, Any]], rec: dict[str, str | None]) -> None:
    """Add one CSV row's caption to its clip (ValueError for a row that cannot be used)."""
    values = {c: (rec.get(c) or "").strip() for c in AUDIOCAPS_COLUMNS}
    empty = [c for c, v in values.items() if not v]
    if empty:
        raise ValueError(f"empty value for {', '.join(empty)}")
    try:
        start_s = float(values["start_time"])
    except ValueError:
        raise ValueError(f"bad start_time {values['start_time']!r}") from None
    start: int | float = int(start_s) if start_s.is_integer() else start_s
    clip = clips.setdefault(values["youtube_id"], {"start": start, "captions": [], "ids": []})
    if clip["start"] != start:
        raise ValueError(f"youtube_id {values['youtube_id']} already seen with start_time "
                         f"{clip['start']}, not {start}")
    clip["captions"].append(values["caption"])
    clip["ids"].append(values["audiocap_id"])


# --- Flickr30k --------------------------------------------------------------------------

def load_flickr30k(src: AnnotationSource) -> list[dict[str, Any]]:
    """One item per image of the split, its five raw sentences the references."""
    take_options("flickr30k", src, {})
    split = src.split or "test"
    records = json_list_records(src.annotations, "images", "a Karpathy-split JSON")
    return collect("flickr30k", src.annotations, records,
                   lambda rec: _flickr_item(src, split, rec), log)


def _flickr_item(src: AnnotationSource, split: str, rec: dict[str, Any]) -> dict | None:
    if text_field(rec, "split") != split:
        return None
    filename = text_field(rec, "filename")
    refs = [text_field(s, "raw") for s in rec["sentences"]]
    meta = {"imgid": rec["imgid"]} if "imgid" in rec else {}
    return item(os.path.splitext(filename)[0], references=refs, image=src.media(filename),
                meta=meta)
