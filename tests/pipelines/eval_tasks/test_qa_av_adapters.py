"""Evaluation annotation adapters on realistic samples: question answering and audio-visual."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.eval_tasks.vqa import fill_template
from tests.pipelines.eval_tasks.helpers import MEDIA, load, row, warnings, write, write_json


# --- TextVQA ----------------------------------------------------------------------------

def test_textvqa(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    answers = ["nokia", "nokia", "nokia", "nokia", "toshiba", "nokia", "nokia", "nokia",
               "nokia", "nokia"]
    path = write_json(tmp_path / "TextVQA_0.5.1_val.json", {
        "dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1",
        "data": [
            {"question": "what is the brand of phone?", "image_id": "0054c91397f2fe05",
             "image_classes": ["Belt", "Headphones", "Goggles"], "image_width": 1024,
             "image_height": 730, "answers": answers,
             "question_tokens": ["what", "is", "the", "brand", "of", "phone"],
             "question_id": 34602, "set_name": "val"},
            {"question": "what does the sign say?", "image_id": "003a8ae2ef43b901",
             "question_id": 34603, "answers": []}]})
    assert load("textvqa", path, media_root="/data/textvqa/train_images") == [
        row("34602", ["nokia", "toshiba"], question="what is the brand of phone?",
            image="/data/textvqa/train_images/0054c91397f2fe05.jpg",
            meta={"answers": answers, "image_id": "0054c91397f2fe05"})]
    assert "data[1]" in warnings(caplog)[0] and "'answers' must be a non-empty list" \
        in warnings(caplog)[0]
    with pytest.raises(ValueError, match="not a TextVQA JSON"):
        load("textvqa", write_json(tmp_path / "x.json", [1, 2]))


# --- GQA --------------------------------------------------------------------------------

def test_gqa(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    types = {"detailed": "verifyAttr", "semantic": "attr", "structural": "verify"}
    path = write_json(tmp_path / "testdev_balanced_questions.json", {
        "20968379": {"semantic": [{"operation": "select", "dependencies": [],
                                   "argument": "shorts (3061413)"}],
                     "entailed": [], "equivalent": ["20968379"],
                     "question": "Do the shorts have dark color?", "imageId": "n288870",
                     "isBalanced": True, "groups": {"global": None, "local": "06-shorts_dark"},
                     "answer": "yes", "semanticStr": "select: shorts (3061413)->verify color: dark",
                     "annotations": {"answer": {}, "question": {"2": "3061413"},
                                     "fullAnswer": {"2": "3061413"}},
                     "types": types, "fullAnswer": "Yes, the shorts are dark."},
        "20968380": {"question": "Who is wearing the shorts?", "imageId": "n288870"}})
    assert load("gqa", path, media_root="/data/gqa/images") == [
        row("20968379", ["yes"], question="Do the shorts have dark color?",
            image="/data/gqa/images/n288870.jpg",
            meta={"fullAnswer": "Yes, the shorts are dark.", "types": types})]
    assert warnings(caplog) == [f"gqa: skipping question 20968380 of {path}: "
                                f"missing key 'answer'"]
    with pytest.raises(ValueError, match="not a GQA questions JSON"):
        load("gqa", write_json(tmp_path / "x.json", []))


# --- NExT-QA ----------------------------------------------------------------------------

NEXTQA_VAL = """video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4
4010069381,369,640,480,how do the two man play the instrument,2,6,CH,roll the handle,tap their feet,strum the string,hit with sticks,pat with hand
4010069381,369,640,480,why did the man on the left turn to look at the other man at the end,0,8,CW,to see his reaction,singing,dancing,look at camera,check the time
6233408665,1612,640,360,what does the baby do after falling down,7,3,TN,cries,stands up,crawls,laughs,sleeps
"""


def test_nextqa(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "val.csv", NEXTQA_VAL)
    choices = ["roll the handle", "tap their feet", "strum the string", "hit with sticks",
               "pat with hand"]
    items = load("nextqa", path, media_root="/data/nextqa/videos")
    assert items[0] == row(
        "4010069381_6", ["strum the string"], question="how do the two man play the instrument",
        choices=choices, video="/data/nextqa/videos/4010069381.mp4",
        meta={"qid": "6", "type": "CH", "video": "4010069381"})
    assert [it["id"] for it in items] == ["4010069381_6", "4010069381_8"]
    assert items[1]["references"] == ["to see his reaction"]
    assert "line 4" in warnings(caplog)[0] and "answer '7' is not an option index 0-4" \
        in warnings(caplog)[0]


def test_nextqa_video_map(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "val.csv", NEXTQA_VAL)
    vmap = write_json(tmp_path / "map_vid_vidorID.json", {"4010069381": "1006/4010069381",
                                                          "2440175990": "1101/2440175990"})
    items = load("nextqa", path, media_root="/data/vidor", video_map=vmap)
    assert [it["video"] for it in items] == ["/data/vidor/1006/4010069381.mp4"] * 2
    with pytest.raises(ValueError, match=r"header lacks \['a0', 'a1', 'a2', 'a3', 'a4'\]"):
        load("nextqa", write(tmp_path / "oe.csv", "video,frame_count,width,height,question,"
                                                  "answer,qid,type\n1,2,3,4,what,x,0,TN\n"))


# --- MUSIC-AVQA -------------------------------------------------------------------------

def test_music_avqa(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_json(tmp_path / "avqa-test.json", [
        {"video_id": "00000823", "question_id": 1, "type": "[\"Audio-Visual\", \"Counting\"]",
         "question_content": "How many <Object> are in the video?",
         "templ_values": "[\"guitar\"]", "question_deleted": 0, "anser": "two"},
        {"video_id": "00006835", "question_id": 27, "type": "[\"Audio-Visual\", \"Location\"]",
         "question_content": "Where is the <FL> sounding instrument?",
         "templ_values": "[\"first\"]", "question_deleted": 0, "anser": "left"},
        {"video_id": "00000015", "question_id": 40, "type": "[\"Audio\", \"Comparative\"]",
         "question_content": "Is the <Object> louder than the <Object>?",
         "templ_values": "[\"piano\"]", "question_deleted": 0, "anser": "yes"},
        {"video_id": "00000016", "question_id": 41, "type": "[\"Visual\", \"Counting\"]",
         "question_content": "Are there <Object> and <Object> instruments in the video?",
         "templ_values": "[\"violin\", \"cello\"]", "answer": "no"},
    ])
    assert load("music_avqa", path, media_root="/data/MUSIC-AVQA/videos") == [
        row("1", ["two"], question="How many guitar are in the video?",
            video="/data/MUSIC-AVQA/videos/00000823.mp4",
            meta={"type": ["Audio-Visual", "Counting"], "family": "Audio-Visual",
                  "question_type": "Audio-Visual/Counting", "video_id": "00000823"}),
        row("27", ["left"], question="Where is the first sounding instrument?",
            video="/data/MUSIC-AVQA/videos/00006835.mp4",
            meta={"type": ["Audio-Visual", "Location"], "family": "Audio-Visual",
                  "question_type": "Audio-Visual/Location", "video_id": "00006835"}),
        row("41", ["no"], question="Are there violin and cello instruments in the video?",
            video="/data/MUSIC-AVQA/videos/00000016.mp4",
            meta={"type": ["Visual", "Counting"], "family": "Visual",
                  "question_type": "Visual/Counting", "video_id": "00000016"})]
    assert "entry 2" in warnings(caplog)[0] and "only 1 templ_values" in warnings(caplog)[0]
    with pytest.raises(ValueError, match="not a MUSIC-AVQA JSON"):
        load("music_avqa", write_json(tmp_path / "x.json", {"questions": []}))


def test_fill_template() -> None:
    assert fill_template("Is the <Object> on the <LR> louder?", ["piano", "left", "x"]) == \
        "Is the piano on the left louder?"
    assert fill_template("Is this sound from the instrument in the video?", []) == \
        "Is this sound from the instrument in the video?"


# --- AVSD -------------------------------------------------------------------------------

AVSD_DIALOG = {
    "image_id": "QRBF4", "caption": "A person is sitting on a couch holding a laptop.",
    "summary": "A man sits on the couch and uses his laptop.",
    "dialog": [
        {"question": "how many people are in the video?", "answer": "there is only one person"},
        {"question": "is it a man or a woman?", "answer": "it is a man"},
        {"question": "does he say anything?", "answer": "no , he does not speak at all"}]}


def test_avsd_last_turn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    undisclosed = {"image_id": "Y5GBA", "dialog": [
        {"question": "what is he doing?", "answer": "__UNDISCLOSED__"}]}
    path = write_json(tmp_path / "test_set4DSTC7-AVSD.json", {
        "type": "video", "version": "0.1",
        "dialogs": [AVSD_DIALOG, undisclosed, {"image_id": "ZZZZZ", "dialog": []}]})
    assert load("avsd", path, media_root="/data/Charades_v1_480") == [
        row("QRBF4", ["no , he does not speak at all"], question="does he say anything?",
            video="/data/Charades_v1_480/QRBF4.mp4",
            history=[{"role": "user", "content": "how many people are in the video?"},
                     {"role": "assistant", "content": "there is only one person"},
                     {"role": "user", "content": "is it a man or a woman?"},
                     {"role": "assistant", "content": "it is a man"}],
            meta={"image_id": "QRBF4", "turn": 2, "caption": AVSD_DIALOG["caption"],
                  "summary": AVSD_DIALOG["summary"]})]
    msgs = warnings(caplog)
    assert "dialogs[1]" in msgs[0] and "last answer of Y5GBA is __UNDISCLOSED__" in msgs[0]
    assert "dialogs[2]" in msgs[1] and "'dialog' must be a non-empty list" in msgs[1]


def test_avsd_all_turns(tmp_path: Path) -> None:
    path = write_json(tmp_path / "valset.json", {"dialogs": [AVSD_DIALOG]})
    items = load("avsd", path, all_turns=True)
    assert [it["id"] for it in items] == ["QRBF4_0", "QRBF4_1", "QRBF4_2"]
    assert items[0]["history"] == [] and items[0]["references"] == ["there is only one person"]
    assert items[1] == row(
        "QRBF4_1", ["it is a man"], question="is it a man or a woman?",
        video=f"{MEDIA}/QRBF4.mp4",
        history=[{"role": "user", "content": "how many people are in the video?"},
                 {"role": "assistant", "content": "there is only one person"}],
        meta={"image_id": "QRBF4", "turn": 1, "caption": AVSD_DIALOG["caption"],
              "summary": AVSD_DIALOG["summary"]})
    with pytest.raises(ValueError, match="not an AVSD JSON"):
        load("avsd", write_json(tmp_path / "x.json", {"data": []}))


# --- AVSSD (VGGSound) -------------------------------------------------------------------

VGGSOUND_CSV = """---g-f_I2yQ,1,"people marching, crowd cheering",test
--0PQM4-hqg,30,waterfall burbling,train
--56QUhyDQM,185,playing tennis,test
--5OkAjCI7g,40,"people belly laughing",test
-0BIyqJj9ZU,abc,dog barking,test
--56QUhyDQM,185,playing tennis,test
"""


def test_avssd(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "vggsound.csv", VGGSOUND_CSV)
    items = load("avssd", path, media_root="/data/vggsound/video")
    assert items == [
        row("---g-f_I2yQ_000001", ["people marching, crowd cheering"],
            video="/data/vggsound/video/---g-f_I2yQ_000001.mp4",
            meta={"youtube_id": "---g-f_I2yQ", "start_seconds": 1}),
        row("--56QUhyDQM_000185", ["playing tennis"],
            video="/data/vggsound/video/--56QUhyDQM_000185.mp4",
            meta={"youtube_id": "--56QUhyDQM", "start_seconds": 185}),
        row("--5OkAjCI7g_000040", ["people belly laughing"],
            video="/data/vggsound/video/--5OkAjCI7g_000040.mp4",
            meta={"youtube_id": "--5OkAjCI7g", "start_seconds": 40})]
    msgs = warnings(caplog)
    assert len(msgs) == 2 and "row 5 of" in msgs[0] and "'abc'" in msgs[0]
    assert "appears more than once" in msgs[1]
    train = load("avssd", path, split="train", pattern="{youtube_id}.mp4")
    assert [(it["id"], it["video"]) for it in train] == \
        [("--0PQM4-hqg_000030", f"{MEDIA}/--0PQM4-hqg.mp4")]
    with pytest.raises(ValueError, match="bad pattern"):
        load("avssd", path, pattern="{video_id}.mp4")


# --- AVM --------------------------------------------------------------------------------

def test_avm(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = [
        {"id": "avm_0001", "image": "vggss/images/-0A9suni5YA_000030.jpg",
         "audio": "vggss/audio/-0A9suni5YA_000030.wav", "match": True},
        {"id": "avm_0002", "video": "s3://corpora/avm/clip2.mp4",
         "audio": "/data/audio/other.wav", "match": False},
        {"id": "avm_0003", "image": "a.jpg", "video": "a.mp4", "audio": "a.wav", "match": True},
        {"id": "avm_0004", "image": "b.jpg", "audio": "b.wav", "match": "yes"},
    ]
    text = "".join(json.dumps(x) + "\n" for x in lines) + "{not json\n"
    path = write(tmp_path / "avm_test.jsonl", text)
    assert load("avm", path, media_root="/data/avm") == [
        row("avm_0001", ["yes"], choices=["yes", "no"],
            image="/data/avm/vggss/images/-0A9suni5YA_000030.jpg",
            audio="/data/avm/vggss/audio/-0A9suni5YA_000030.wav"),
        row("avm_0002", ["no"], choices=["yes", "no"], video="s3://corpora/avm/clip2.mp4",
            audio="/data/audio/other.wav")]
    msgs = warnings(caplog)
    assert len(msgs) == 3
    assert "line 3" in msgs[0] and "exactly one of 'image' or 'video'" in msgs[0]
    assert "line 4" in msgs[1] and "'match' must be true or false" in msgs[1]
    assert "line 5" in msgs[2] and str(path) in msgs[2]
