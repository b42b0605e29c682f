"""Speech-recognition tasks: LibriSpeech (audio ASR) and How2 (audio-visual ASR).

LibriSpeech (openslr.org/12, e.g. ``test-clean.tar.gz``): a split directory such as
``LibriSpeech/test-clean`` holds ``<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` with
one line per utterance, ``UTT_ID TRANSCRIPT``, and the audio ``UTT_ID.flac`` next to it::

    1272-128104-0000 MISTER QUILTER IS THE APOSTLE OF THE MIDDLE CLASSES AND WE ARE GLAD ...

``annotations`` is that directory (local) or one ``.trans.txt`` file (local or s3://). The
audio is found next to the transcript, or under ``media_root/<speaker>/<chapter>/`` when
``media_root`` is set. Option ``ext`` (default "flac") for converted copies.

How2 (github.com/srvk/how2-dataset, the 300 h "en" text release, ``how2-300h-v1/data/
{train,val,dev5}``): Kaldi-style transcripts, ``UTT_ID transcript`` per line, in ``text``
(after the ESPnet recipe) or ``text.id.en`` (as released). ``annotations`` is the file or
the set directory; a directory whose ``text.id.en`` holds ids only is paired line by line
with its ``text.en``. The video of an utterance is ``media_root/UTT_ID.<ext>`` (option
``ext``, default "mp4"): How2 ships features, so the clips are cut by the user.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterator

from pipelines import storage
from pipelines.eval_tasks.base import AnnotationSource, item
from pipelines.eval_tasks.generic import collect, take_options, text_lines

log = logging.getLogger(__name__)

TRANS_SUFFIX = ".trans.txt"


# --- LibriSpeech ------------------------------------------------------------------------

def load_librispeech(src: AnnotationSource) -> list[dict[str, Any]]:
    """One item per utterance: audio = its flac, references = [transcript]."""
    ext = take_options("librispeech", src, {"ext": "flac"})["ext"]
    records = ((f"{path} line {n}", (path, line))
               for path in _transcript_files(src.annotations)
               for n, line in text_lines(path))
    return collect("librispeech", src.annotations, records,
                   lambda rec: _librispeech_item(src, ext, *rec), log)


def _transcript_files(annotations: str) -> list[str]:
    """The ``*.trans.txt`` files of a split directory (or the one file given)."""
    if annotations.endswith(TRANS_SUFFIX):
        return [annotations]
    root = storage.local_path(annotations)
    if storage.is_s3(annotations) or not os.path.isdir(root):
        raise ValueError(f"{annotations}: not a LibriSpeech split directory (local) "
                         f"or a {TRANS_SUFFIX} file")
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        found += [os.path.join(folder, f) for f in sorted(files) if f.endswith(TRANS_SUFFIX)]
    if not found:
        raise ValueError(f"{annotations}: no <speaker>/<chapter>/*{TRANS_SUFFIX} files, "
                         f"not a LibriSpeech split directory")
    return found


def _librispeech_item(src: AnnotationSource, ext: str, trans: str, line: str) -> dict:
    utt, _, text = line.partition(" ")
    parts = utt.split("-")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"bad utterance id {utt!r} (want SPEAKER-CHAPTER-NNNN)")
    if not text.strip():
        raise ValueError(f"no transcript after {utt!r}")
    speaker, chapter, _ = parts
    name = f"{utt}.{ext}"
    if src.media_root:
        audio = src.media(speaker, chapter, name)
    elif storage.is_s3(trans):
        audio = storage.join(trans.rsplit("/", 1)[0], name)
    else:
        audio = os.path.join(os.path.dirname(storage.local_path(trans)), name)
    return item(utt, references=[text.strip()], audio=audio,
                meta={"speaker": speaker, "chapter": chapter})


# --- How2 -------------------------------------------------------------------------------

def load_how2(src: AnnotationSource) -> list[dict[str, Any]]:
    """One item per utterance: video = media_root/UTT_ID.<ext>, references = [transcript]."""
    ext = take_options("how2", src, {"ext": "mp4"})["ext"]
    return collect("how2", src.annotations, _how2_records(src.annotations),
                   lambda rec: _how2_item(src, ext, *rec), log)


def _how2_item(src: AnnotationSource, ext: str, utt: str, text: str) -> dict[str, Any]:
    if not utt or not text.strip():
        raise ValueError(f"no transcript for utterance {utt!r}")
    return item(utt, references=[text.strip()], video=src.media(f"{utt}.{ext}"))


def _how2_records(annotations: str) -> Iterator[tuple[str, tuple[str, str]]]:
    """(where, (utterance id, transcript)) from a Kaldi text file or a How2 set directory."""
    root = storage.local_path(annotations)
    if storage.is_s3(annotations) or not os.path.isdir(root):
        return _kaldi_records(annotations)
    text, ids, sentences = (os.path.join(root, n) for n in ("text", "text.id.en", "text.en"))
    if os.path.isfile(text):
        return _kaldi_records(text)
    if not os.path.isfile(ids):
        raise ValueError(f"{annotations}: no Kaldi 'text' or How2 'text.id.en' file")
    id_lines = _all_lines(ids)
    if os.path.isfile(sentences) and all(len(line.split()) <= 1 for line in id_lines):
        return _paired_records(ids, id_lines, sentences)
    return _kaldi_records(ids)


def _kaldi_records(uri: str) -> Iterator[tuple[str, tuple[str, str]]]:
    for number, line in text_lines(uri):
        utt, _, text = line.partition(" ")
        yield f"line {number}", (utt, text)


def _paired_records(ids_uri: str, ids: list[str], sentences_uri: str
                    ) -> Iterator[tuple[str, tuple[str, str]]]:
    sentences = _all_lines(sentences_uri)
    if len(ids) != len(sentences):
        raise ValueError(f"{ids_uri} has {len(ids)} lines but {sentences_uri} has "
                         f"{len(sentences)}: not a matching How2 id/text pair")
    for number, (utt, text) in enumerate(zip(ids, sentences), start=1):
        if utt or text:
            yield f"line {number}", (utt, text)


def _all_lines(path: str) -> list[str]:
    """Every line, blank ones kept, so that two line-aligned files stay aligned."""
    with open(path, encoding="utf-8-sig") as f:
        lines = [line.strip() for line in f.read().splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines
