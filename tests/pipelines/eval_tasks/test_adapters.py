"""Evaluation annotation adapters on realistic samples: registry, own JSONL, speech, captions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipelines.eval_tasks import ADAPTERS, load_items
from pipelines.eval_tasks.base import AnnotationSource
from tests.pipelines.eval_tasks.helpers import MEDIA, load, row, warnings, write, write_json


# --- registry ---------------------------------------------------------------------------

def test_registry_names() -> None:
    assert set(ADAPTERS) == {"librispeech", "how2", "audiocaps", "flickr30k", "textvqa", "gqa",
                             "nextqa", "music_avqa", "avsd", "avssd", "avm", "jsonl",
                             "synthetic"}


def test_unknown_adapter_and_option(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'vqav2'.*known: \['audiocaps', 'avm'"):
        load_items("vqav2", AnnotationSource(str(tmp_path)))
    path = write(tmp_path / "a.jsonl", '{"id": "1", "answer": "x"}\n')
    with pytest.raises(ValueError, match=r"jsonl adapter: unknown options \['ext'\]"):
        load("jsonl", path, ext="mp4")


def test_limit_and_duplicate_ids(tmp_path: Path) -> None:
    lines = [{"id": f"q{i}", "answer": str(i)} for i in range(5)]
    path = write(tmp_path / "a.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    assert [it["id"] for it in load_items("jsonl", AnnotationSource(path), limit=2)] == \
        ["q0", "q1"]
    assert load_items("jsonl", AnnotationSource(path), limit=0) == []
    dup = write(tmp_path / "dup.jsonl",
                '{"id": "q1", "answer": "a"}\n{"id": "q1", "answer": "b"}\n')
    with pytest.raises(ValueError, match=r"jsonl: item id 'q1' appears more than once in .*dup"):
        load_items("jsonl", AnnotationSource(dup))


# --- LibriSpeech ------------------------------------------------------------------------

def make_librispeech(root: Path) -> Path:
    split = root / "LibriSpeech" / "test-clean"
    write(split / "1272/128104/1272-128104.trans.txt",
          "1272-128104-0000 MISTER QUILTER IS THE APOSTLE OF THE MIDDLE CLASSES AND WE ARE "
          "GLAD TO WELCOME HIS GOSPEL\n"
          "1272-128104-0001 NOR IS MISTER QUILTER'S MANNER LESS INTERESTING THAN HIS MATTER\n")
    write(split / "1089/134686/1089-134686.trans.txt",
          "1089-134686-0000 HE HOPED THERE WOULD BE STEW FOR DINNER TURNIPS AND CARROTS\n\n"
          "1089-134686-0001\n"
          "STUFF IT INTO YOU HIS BELLY COUNSELLED HIM\n")
    write(split / "1089/134686/1089-134686-0000.flac", "")
    return split


def test_librispeech_split_directory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    split = make_librispeech(tmp_path)
    items = load("librispeech", str(split), media_root="")
    chap = f"{split}/1089/134686"
    assert items == [
        row("1089-134686-0000",
            ["HE HOPED THERE WOULD BE STEW FOR DINNER TURNIPS AND CARROTS"],
            audio=f"{chap}/1089-134686-0000.flac", meta={"speaker": "1089", "chapter": "134686"}),
        row("1272-128104-0000",
            ["MISTER QUILTER IS THE APOSTLE OF THE MIDDLE CLASSES AND WE ARE GLAD TO WELCOME "
             "HIS GOSPEL"],
            audio=f"{split}/1272/128104/1272-128104-0000.flac",
            meta={"speaker": "1272", "chapter": "128104"}),
        row("1272-128104-0001",
            ["NOR IS MISTER QUILTER'S MANNER LESS INTERESTING THAN HIS MATTER"],
            audio=f"{split}/1272/128104/1272-128104-0001.flac",
            meta={"speaker": "1272", "chapter": "128104"})]
    assert len(warnings(caplog)) == 2
    assert "line 3" in warnings(caplog)[0] and "no transcript after '1089-134686-0001'" \
        in warnings(caplog)[0]
    assert "bad utterance id 'STUFF'" in warnings(caplog)[1]


def test_librispeech_one_file_and_media_root(tmp_path: Path) -> None:
    split = make_librispeech(tmp_path)
    trans = str(split / "1272/128104/1272-128104.trans.txt")
    items = load("librispeech", trans, media_root="s3://corpora/librispeech/test-clean",
                 ext="wav")
    assert [it["audio"] for it in items] == [
        "s3://corpora/librispeech/test-clean/1272/128104/1272-128104-0000.wav",
        "s3://corpora/librispeech/test-clean/1272/128104/1272-128104-0001.wav"]
    assert load("librispeech", trans, media_root="")[0]["audio"] == \
        str(split / "1272/128104/1272-128104-0000.flac")


def test_librispeech_wrong_directory(tmp_path: Path) -> None:
    write(tmp_path / "notes.txt", "hello\n")
    with pytest.raises(ValueError, match=rf"{tmp_path}: no <speaker>/<chapter>/\*\.trans\.txt"):
        load("librispeech", str(tmp_path))
    with pytest.raises(ValueError, match="not a LibriSpeech split directory"):
        load("librispeech", str(tmp_path / "missing"))


# --- How2 -------------------------------------------------------------------------------

HOW2_TEXT = ("-0hpF0Efp9Q_1 so today we're going to talk about how to play the bass\n"
             "-0hpF0Efp9Q_2 first thing you want to do is tune your strings\n"
             "_1kYq2SBvt8_0\n")


def test_how2_kaldi_text(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "dev5" / "text", HOW2_TEXT)
    expected = [
        row("-0hpF0Efp9Q_1", ["so today we're going to talk about how to play the bass"],
            video=f"{MEDIA}/-0hpF0Efp9Q_1.mp4"),
        row("-0hpF0Efp9Q_2", ["first thing you want to do is tune your strings"],
            video=f"{MEDIA}/-0hpF0Efp9Q_2.mp4")]
    assert load("how2", path) == expected
    assert load("how2", str(tmp_path / "dev5")) == expected
    assert "line 3" in warnings(caplog)[0] and "_1kYq2SBvt8_0" in warnings(caplog)[0]
    assert load("how2", path, ext="mkv")[0]["video"] == f"{MEDIA}/-0hpF0Efp9Q_1.mkv"


def test_how2_release_files(tmp_path: Path) -> None:
    kaldi = tmp_path / "val"
    write(kaldi / "text.id.en", HOW2_TEXT)
    assert [it["id"] for it in load("how2", str(kaldi))] == ["-0hpF0Efp9Q_1", "-0hpF0Efp9Q_2"]
    paired = tmp_path / "dev5"
    write(paired / "text.id.en", "-0hpF0Efp9Q_1\n-0hpF0Efp9Q_2\n")
    write(paired / "text.en", "so today we're going to talk about how to play the bass\n"
                              "first thing you want to do is tune your strings\n")
    assert load("how2", str(paired)) == [
        row("-0hpF0Efp9Q_1", ["so today we're going to talk about how to play the bass"],
            video=f"{MEDIA}/-0hpF0Efp9Q_1.mp4"),
        row("-0hpF0Efp9Q_2", ["first thing you want to do is tune your strings"],
            video=f"{MEDIA}/-0hpF0Efp9Q_2.mp4")]
    write(paired / "text.en", "only one line\n")
    with pytest.raises(ValueError, match=r"text\.id\.en has 2 lines but .*text\.en has 1"):
        load("how2", str(paired))
    with pytest.raises(ValueError, match=rf"{tmp_path}: no Kaldi 'text' or How2 'text.id.en'"):
        load("how2", str(tmp_path))


# --- AudioCaps --------------------------------------------------------------------------

AUDIOCAPS_TEST = """audiocap_id,youtube_id,start_time,caption
103549,--0w1YA1Hm4,30,A vehicle driving as a man and woman are talking and laughing
103548,--0w1YA1Hm4,30,High pitched speaking and laughing
103541,--0w1YA1Hm4,30,Humming of an engine with a woman and men speaking
103540,--0w1YA1Hm4,30,People talking with the dull hum of an engine
103542,--0w1YA1Hm4,30,"A woman talks, then a man talks, as an engine runs"
107432,-1Tt4Ylvb1M,0,A toilet flushes and water drains
107433,-1Tt4Ylvb1M,0,A toilet is flushed
107434,-1Tt4Ylvb1M,abc,Water gurgles
107435,-1Tt4Ylvb1M,20,Someone flushes a toilet
107436,-1Tt4Ylvb1M,0,
"""


def test_audiocaps_groups_captions(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "test.csv", AUDIOCAPS_TEST)
    assert load("audiocaps", path, media_root="s3://corpora/audiocaps/test") == [
        row("--0w1YA1Hm4",
            ["A vehicle driving as a man and woman are talking and laughing",
             "High pitched speaking and laughing",
             "Humming of an engine with a woman and men speaking",
             "People talking with the dull hum of an engine",
             "A woman talks, then a man talks, as an engine runs"],
            audio="s3://corpora/audiocaps/test/--0w1YA1Hm4.wav",
            meta={"youtube_id": "--0w1YA1Hm4", "start_time": 30,
                  "audiocap_ids": ["103549", "103548", "103541", "103540", "103542"]}),
        row("-1Tt4Ylvb1M", ["A toilet flushes and water drains", "A toilet is flushed"],
            audio="s3://corpora/audiocaps/test/-1Tt4Ylvb1M.wav",
            meta={"youtube_id": "-1Tt4Ylvb1M", "start_time": 0,
                  "audiocap_ids": ["107432", "107433"]})]
    msgs = warnings(caplog)
    assert len(msgs) == 3 and all(str(path) in m for m in msgs)
    assert "line 9" in msgs[0] and "bad start_time 'abc'" in msgs[0]
    assert "line 10" in msgs[1] and "already seen with start_time 0, not 20" in msgs[1]
    assert "line 11" in msgs[2] and "empty value for caption" in msgs[2]


def test_audiocaps_pattern_and_ext(tmp_path: Path) -> None:
    path = write(tmp_path / "test.csv", AUDIOCAPS_TEST)
    assert load("audiocaps", path, ext="flac")[0]["audio"] == f"{MEDIA}/--0w1YA1Hm4.flac"
    assert load("audiocaps", path, pattern="Y{youtube_id}.wav")[0]["audio"] == \
        f"{MEDIA}/Y--0w1YA1Hm4.wav"
    assert load("audiocaps", path, pattern="{youtube_id}_{start_time}.wav")[1]["audio"] == \
        f"{MEDIA}/-1Tt4Ylvb1M_0.wav"
    with pytest.raises(ValueError, match="bad pattern '{ytid}.wav'"):
        load("audiocaps", path, pattern="{ytid}.wav")


def test_audiocaps_wrong_csv(tmp_path: Path) -> None:
    path = write(tmp_path / "clotho.csv", "file_name,caption_1,caption_2\na.wav,x,y\n")
    with pytest.raises(ValueError, match=rf"{path}: not a AudioCaps CSV, header lacks"):
        load("audiocaps", path)


# --- Flickr30k --------------------------------------------------------------------------

def flickr_image(imgid: int, filename: str, split: str, raws: list[str]) -> dict[str, Any]:
    return {"sentids": list(range(5 * imgid, 5 * imgid + len(raws))), "imgid": imgid,
            "sentences": [{"tokens": r.lower().split(), "raw": r, "imgid": imgid,
                           "sentid": 5 * imgid + i} for i, r in enumerate(raws)],
            "split": split, "filename": filename}


FLICKR_TEST_RAWS = [
    "The man with pierced ears is wearing glasses and an orange hat.",
    "A man with glasses is wearing a beer can crocheted hat.",
    "A man with gauges and glasses is wearing a Blitz hat.",
    "A man in an orange hat starring at something.",
    "A man wears an orange hat and glasses."]


def test_flickr30k_test_split(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_json(tmp_path / "dataset_flickr30k.json", {"dataset": "flickr30k", "images": [
        flickr_image(0, "1000092795.jpg", "train", ["Two young guys with shaggy hair look at "
                                                    "their hands while hanging out in the yard."]),
        flickr_image(1, "1007129816.jpg", "test", FLICKR_TEST_RAWS),
        {"imgid": 2, "filename": "1009434119.jpg", "split": "test"},
    ]})
    assert load("flickr30k", path, media_root="/data/flickr30k-images") == [
        row("1007129816", FLICKR_TEST_RAWS, image="/data/flickr30k-images/1007129816.jpg",
            meta={"imgid": 1})]
    assert warnings(caplog) == [f"flickr30k: skipping images[2] of {path}: "
                                f"missing key 'sentences'"]
    assert [it["id"] for it in load("flickr30k", path, split="train")] == ["1000092795"]


def test_flickr30k_wrong_json(tmp_path: Path) -> None:
    path = write_json(tmp_path / "captions.json", {"annotations": []})
    with pytest.raises(ValueError, match=rf"{path}: not a Karpathy-split JSON"):
        load("flickr30k", path)
    bad = write(tmp_path / "broken.json", '{"images": [')
    with pytest.raises(ValueError, match=rf"{bad}: not a JSON file"):
        load("flickr30k", bad)


# --- our JSONL --------------------------------------------------------------------------

def test_jsonl(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    history = [{"role": "user", "content": "what is on the table?"},
               {"role": "assistant", "content": "a guitar"}]
    lines = [
        {"id": "q1", "video": "clips/a.mp4", "question": "What plays?", "answer": "a piano"},
        {"id": "q2", "image": "img/b.jpg", "audio": "s3://bucket/b.wav", "question": "Which?",
         "references": ["left", "the left one"], "choices": ["left", "right"],
         "history": history, "meta": {"family": "sync"}},
        {"id": "q3", "question": "no answer"},
        {"id": "q4", "answer": "x", "history": [{"role": "user"}]},
        {"id": "q5", "references": []},
    ]
    path = write(tmp_path / "task.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    assert load("jsonl", path, media_root="/data/own") == [
        row("q1", ["a piano"], question="What plays?", video="/data/own/clips/a.mp4"),
        row("q2", ["left", "the left one"], question="Which?", image="/data/own/img/b.jpg",
            audio="s3://bucket/b.wav", choices=["left", "right"], history=history,
            meta={"family": "sync"})]
    msgs = warnings(caplog)
    assert len(msgs) == 3
    assert "line 3" in msgs[0] and "missing key 'answer'" in msgs[0]
    assert "line 4" in msgs[1] and "'history' must be a list" in msgs[1]
    assert "line 5" in msgs[2] and "at least one reference" in msgs[2]


def test_media_next_to_annotations(tmp_path: Path) -> None:
    path = write(tmp_path / "task.jsonl", '{"id": "q1", "audio": "a.wav", "answer": "x"}\n')
    assert load("jsonl", path, media_root="")[0]["audio"] == f"{tmp_path}/a.wav"
