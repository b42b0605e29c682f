"""Question-answering tasks: TextVQA, GQA (image), NExT-QA (video), MUSIC-AVQA (audio-visual).

TextVQA (textvqa.org, ``TextVQA_0.5.1_val.json``): ``{"data": [{"question", "image_id",
"question_id", "answers": [10 strings], ...}]}``; image = ``media_root/{image_id}.jpg``
(the ``train_images`` folder). References are the distinct answers, most frequent first;
``meta.answers`` keeps all ten for the VQA accuracy (min(#humans agreeing / 3, 1)).

GQA (cs.stanford.edu/people/dorarad/gqa, ``testdev_balanced_questions.json``): ``{qid:
{"imageId", "question", "answer", "fullAnswer", "types", ...}}``; image =
``media_root/{imageId}.jpg``; ``meta`` keeps fullAnswer and types.

NExT-QA multiple choice (github.com/doc-doc/NExT-QA, ``dataset/nextqa/val.csv`` /
``test.csv``): headed CSV ``video,frame_count,width,height,question,answer,qid,type,a0..a4``
where ``answer`` is the index of the right option and ``qid`` counts within a video (id =
``{video}_{qid}``). Video = ``media_root/{video}.mp4``, or with option ``video_map`` (the path
of NExT-QA's ``map_vid_vidorID.json``, ``{"<video>": "<folder>/<vidorid>"}``)
``media_root/<folder>/<vidorid>.mp4`` as VidOR ships them. ``meta`` keeps type (CW, CH, TN,
TC, DC, DL, DO) and qid.

MUSIC-AVQA (gewu-lab.github.io/MUSIC-AVQA, ``avqa-test.json``): a list of ``{"video_id",
"question_id", "type": "[\\"Audio-Visual\\", \\"Counting\\"]", "question_content": "How many
<Object> are in the video?", "templ_values": "[\\"guitar\\"]", "anser": "two"}`` - ``type``
and ``templ_values`` are JSON strings and the answer key is spelled "anser" (a re-export's
"answer" is accepted too). Each ``<...>`` placeholder is filled in order from templ_values;
video = ``media_root/{video_id}.mp4``; ``meta.type`` is the parsed type list, with
``meta.family`` (Audio / Visual / Audio-Visual) and ``meta.question_type`` (e.g.
"Audio-Visual/Counting") as string keys to break scores down by.

NExT-QA and MUSIC-AVQA take option ``ext`` (default "mp4") for the video files.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from typing import Any

from pipelines.corpora.base import csv_records
from pipelines.eval_tasks.base import AnnotationSource, item
from pipelines.eval_tasks.generic import collect, read_json, take_options, text_field

log = logging.getLogger(__name__)

NEXTQA_CHOICES = ("a0", "a1", "a2", "a3", "a4")
NEXTQA_COLUMNS = ("video", "question", "answer", "qid", "type", *NEXTQA_CHOICES)
_PLACEHOLDER = re.compile(r"<[^<>]+>")


# --- TextVQA ----------------------------------------------------------------------------

def load_textvqa(src: AnnotationSource) -> list[dict[str, Any]]:
    take_options("textvqa", src, {})
    data = read_json(src.annotations)
    rows = data.get("data") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ValueError(f"{src.annotations}: not a TextVQA JSON (no 'data' list)")
    records = ((f"data[{i}]", rec) for i, rec in enumerate(rows))
    return collect("textvqa", src.annotations, records, lambda rec: _textvqa_item(src, rec), log)


def _textvqa_item(src: AnnotationSource, rec: dict[str, Any]) -> dict[str, Any]:
    answers = rec["answers"]
    if not isinstance(answers, list) or not answers:
        raise ValueError("'answers' must be a non-empty list")
    answers = [str(a).strip() for a in answers]
    distinct = [a for a, _ in Counter(answers).most_common() if a]
    image_id = text_field(rec, "image_id")
    return item(text_field(rec, "question_id"), question=text_field(rec, "question"),
                image=src.media(f"{image_id}.jpg"), references=distinct,
                meta={"answers": answers, "image_id": image_id})


# --- GQA --------------------------------------------------------------------------------

def load_gqa(src: AnnotationSource) -> list[dict[str, Any]]:
    take_options("gqa", src, {})
    data = read_json(src.annotations)
    if not isinstance(data, dict):
        raise ValueError(f"{src.annotations}: not a GQA questions JSON (want {{qid: question}})")
    return collect("gqa", src.annotations, ((f"question {q}", (q, rec)) for q, rec in data.items()),
                   lambda rec: _gqa_item(src, *rec), log)


def _gqa_item(src: AnnotationSource, qid: str, rec: dict[str, Any]) -> dict[str, Any]:
    meta = {k: rec[k] for k in ("fullAnswer", "types") if k in rec}
    return item(qid, question=text_field(rec, "question"), references=[text_field(rec, "answer")],
                image=src.media(f"{text_field(rec, 'imageId')}.jpg"), meta=meta)


# --- NExT-QA ----------------------------------------------------------------------------

def load_nextqa(src: AnnotationSource) -> list[dict[str, Any]]:
    opts = take_options("nextqa", src, {"video_map": None, "ext": "mp4"})
    video_map = None
    if opts["video_map"]:
        video_map = read_json(opts["video_map"])
        if not isinstance(video_map, dict):
            raise ValueError(f"{opts['video_map']}: not a NExT-QA map_vid_vidorID.json object")
    records = ((f"line {n}", rec)
               for n, rec in csv_records(src.annotations, NEXTQA_COLUMNS, "NExT-QA"))
    return collect("nextqa", src.annotations, records,
                   lambda rec: _nextqa_item(src, rec, video_map, opts["ext"]), log)


def _nextqa_item(src: AnnotationSource, rec: dict[str, Any], video_map: dict | None,
                 ext: str) -> dict[str, Any]:
    video, qid = text_field(rec, "video"), text_field(rec, "qid")
    choices = [text_field(rec, c) for c in NEXTQA_CHOICES]
    answer = text_field(rec, "answer")
    if not answer.isdigit() or int(answer) >= len(choices):
        raise ValueError(f"answer {answer!r} is not an option index 0-{len(choices) - 1}")
    if video_map is None:
        path = video
    elif video in video_map:
        path = str(video_map[video])
    else:
        raise ValueError(f"video {video} is not in video_map")
    return item(f"{video}_{qid}", question=text_field(rec, "question"), choices=choices,
                references=[choices[int(answer)]], video=src.media(f"{path}.{ext}"),
                meta={"qid": qid, "type": text_field(rec, "type"), "video": video})


# --- MUSIC-AVQA -------------------------------------------------------------------------

def load_music_avqa(src: AnnotationSource) -> list[dict[str, Any]]:
    ext = take_options("music_avqa", src, {"ext": "mp4"})["ext"]
    data = read_json(src.annotations)
    if not isinstance(data, list):
        raise ValueError(f"{src.annotations}: not a MUSIC-AVQA JSON (want a list of questions)")
    records = ((f"entry {i}", rec) for i, rec in enumerate(data))
    return collect("music_avqa", src.annotations, records,
                   lambda rec: _music_avqa_item(src, rec, ext), log)


def _music_avqa_item(src: AnnotationSource, rec: dict[str, Any], ext: str) -> dict[str, Any]:
    types = _json_list(rec["type"], "type")
    question = fill_template(text_field(rec, "question_content"),
                             _json_list(rec.get("templ_values") or "[]", "templ_values"))
    answer = text_field(rec, "anser" if "anser" in rec else "answer")
    video_id = text_field(rec, "video_id")
    return item(text_field(rec, "question_id"), question=question, references=[answer],
                video=src.media(f"{video_id}.{ext}"),
                meta={"type": types, "family": types[0] if types else "",
                      "question_type": "/".join(types), "video_id": video_id})


def fill_template(template: str, values: list[str]) -> str:
    """Replace each ``<...>`` placeholder in order with the next value."""
    slots = _PLACEHOLDER.findall(template)
    if len(slots) > len(values):
        raise ValueError(f"{len(slots)} placeholders in {template!r} but only "
                         f"{len(values)} templ_values")
    fill = iter(values)
    return _PLACEHOLDER.sub(lambda _: next(fill), template)


def _json_list(value: Any, key: str) -> list[str]:
    """A list of strings given as a JSON string (as MUSIC-AVQA ships it) or as a list."""
    parsed = json.loads(value) if isinstance(value, str) else value
    if not isinstance(parsed, list) or not all(isinstance(v, str) for v in parsed):
        raise ValueError(f"{key!r} is not a list of strings: {value!r}")
    return parsed
