"""Audio-visual tasks: AVSD (dialogue), AVSSD (sound-source detection), AVM (matching).

AVSD (DSTC7 / DSTC8 audio-visual scene-aware dialog, github.com/hudaAlamri/DSTC7-Audio-
Visual-Scene-Aware-Dialog-AVSD-Challenge, e.g. ``test_set4DSTC7-AVSD.json``): ``{"dialogs":
[{"image_id", "caption", "summary", "dialog": [{"question", "answer"}, ...]}]}`` on Charades
videos. One item per dialog, on its LAST turn, id = image_id (option ``all_turns: true``:
one item per turn, id ``{image_id}_{turn}``, turns counted from 0); ``history`` = the earlier
turns as user/assistant messages, references = [answer]. Video =
``media_root/{image_id}.<ext>`` (option ``ext``, default "mp4"). A turn whose answer is
``__UNDISCLOSED__`` (the challenge's blind test file) cannot be scored and is left out.

AVSSD (FAVOR's audio-visual sound-source detection on VGGSound / VGG-SS): the official
headerless ``vggsound.csv`` (youtube_id,start_seconds,label,split), read by
``pipelines.corpora.vggsound``. ``split`` filters (default "test"); id =
``{youtube_id}_{start:06d}``, references = [label], video = ``media_root/`` + option
``pattern`` (default ``"{youtube_id}_{start:06d}.mp4"``; fields youtube_id, start).

AVM (audio-visual matching, our JSON-lines format): one object per line ``{"id", "image"
or "video", "audio", "match": true/false}``; relative media paths resolve under
``media_root``. choices = ["yes", "no"], references = ["yes"] for a matching pair else
["no"].
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pipelines.corpora import vggsound
from pipelines.corpora.base import dedupe
from pipelines.eval_tasks.base import AnnotationSource, item
from pipelines.eval_tasks.generic import (collect, json_list_records, json_object_lines, media_path,
                                          take_options, text_field)

log = logging.getLogger(__name__)

UNDISCLOSED = "__UNDISCLOSED__"
AVSSD_PATTERN = "{youtube_id}_{start:06d}.mp4"


# --- AVSD -------------------------------------------------------------------------------

def load_avsd(src: AnnotationSource) -> list[dict[str, Any]]:
    opts = take_options("avsd", src, {"all_turns": False, "ext": "mp4"})
    records = json_list_records(src.annotations, "dialogs", "an AVSD JSON")
    return collect("avsd", src.annotations, records,
                   lambda rec: _avsd_items(src, rec, bool(opts["all_turns"]), opts["ext"]), log)


def _avsd_items(src: AnnotationSource, rec: dict[str, Any], all_turns: bool,
                ext: str) -> list[dict[str, Any]]:
    image_id = text_field(rec, "image_id")
    turns = rec["dialog"]
    if not isinstance(turns, list) or not turns:
        raise ValueError("'dialog' must be a non-empty list of turns")
    pairs = [(text_field(t, "question"), text_field(t, "answer")) for t in turns]
    extra = {k: rec[k] for k in ("caption", "summary") if isinstance(rec.get(k), str)}
    items = []
    for turn in range(len(pairs)) if all_turns else [len(pairs) - 1]:
        question, answer = pairs[turn]
        if answer == UNDISCLOSED:
            continue
        history = [{"role": role, "content": text}
                   for q, a in pairs[:turn] for role, text in (("user", q), ("assistant", a))]
        items.append(item(f"{image_id}_{turn}" if all_turns else image_id, question=question,
                          references=[answer], history=history,
                          video=src.media(f"{image_id}.{ext}"),
                          meta={"image_id": image_id, "turn": turn, **extra}))
    if not items and not all_turns:
        raise ValueError(f"the last answer of {image_id} is {UNDISCLOSED}: use the test "
                         f"file with the reference answers")
    return items


# --- AVSSD ------------------------------------------------------------------------------

def load_avssd(src: AnnotationSource) -> list[dict[str, Any]]:
    pattern = take_options("avssd", src, {"pattern": AVSSD_PATTERN})["pattern"]
    try:
        pattern.format(youtube_id="x", start=0)
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"avssd adapter: bad pattern {pattern!r} (fields: youtube_id, "
                         f"start): {err!r}") from err
    result = dedupe(vggsound.load(src.annotations, "", split=src.split or "test",
                                  check_files=False))
    for error in result.errors:
        log.warning("avssd: skipping %s: %s", error["clip_id"], error["message"])
    items = []
    for row in result.rows:
        meta = json.loads(row["meta"])
        ytid, start = meta["youtube_id"], meta["start_seconds"]
        items.append(item(f"{ytid}_{start:06d}", references=row["labels"],
                          video=src.media(pattern.format(youtube_id=ytid, start=start)),
                          meta={"youtube_id": ytid, "start_seconds": start}))
    log.info("avssd: %d items (%d bad rows skipped) from %s", len(items), len(result.errors),
             src.annotations)
    return items


# --- AVM --------------------------------------------------------------------------------

def load_avm(src: AnnotationSource) -> list[dict[str, Any]]:
    take_options("avm", src, {})
    return json_object_lines("avm", src, lambda rec: _avm_item(src, rec))


def _avm_item(src: AnnotationSource, rec: dict[str, Any]) -> dict[str, Any]:
    visual = [k for k in ("image", "video") if rec.get(k) is not None]
    if len(visual) != 1:
        raise ValueError("need exactly one of 'image' or 'video'")
    match = rec["match"]
    if not isinstance(match, bool):
        raise ValueError(f"'match' must be true or false, got {match!r}")
    media = {visual[0]: media_path(src, text_field(rec, visual[0])),
             "audio": media_path(src, text_field(rec, "audio"))}
    return item(text_field(rec, "id"), references=["yes" if match else "no"],
                choices=["yes", "no"], **media)
