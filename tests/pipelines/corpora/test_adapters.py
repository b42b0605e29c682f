"""Corpus adapters on realistic metadata: rows, error rows, registry, manifest round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.corpora import ADAPTERS, acav, audiocaps, build_manifest, jsonl, vggsound, webvid
from pipelines.corpora.base import MANIFEST_KEYS, read_manifest, write_manifest

WEBVID_SAMPLE = "/work/shared/media/webvid_sample.csv"  # 20 real rows, read-only


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def errors_by(result, error: str) -> list[dict]:
    return [e for e in result.errors if e["error"] == error]


# --- WebVid -----------------------------------------------------------------------------

def test_parse_iso_duration() -> None:
    assert webvid.parse_iso_duration("PT00H00M17S") == 17.0
    assert webvid.parse_iso_duration("PT00H01M00S") == 60.0
    assert webvid.parse_iso_duration("PT1H2M3.5S") == 3723.5
    assert webvid.parse_iso_duration("PT12.25S") == 12.25
    for bad in ("", "PT", "17", "PT17", "00:00:17", "PTxxS"):
        with pytest.raises(ValueError):
            webvid.parse_iso_duration(bad)


def test_webvid_real_sample_with_missing_files(tmp_path: Path) -> None:
    touch(tmp_path, "027701_027750/1053841541.mp4", "054101_054150/5641526.mp4",
          "022401_022450/1019039938.mp4", "014801_014850/29797315.mp4")
    result = webvid.load(WEBVID_SAMPLE, str(tmp_path))
    assert len(result.rows) == 4
    assert len(result.errors) == 16
    assert {e["error"] for e in result.errors} == {"missing_file"}
    assert "webvid_9429470" in {e["clip_id"] for e in result.errors}
    by_id = {r["clip_id"]: r for r in result.rows}
    assert list(by_id) == ["webvid_1053841541", "webvid_5641526", "webvid_1019039938",
                           "webvid_29797315"]
    row = by_id["webvid_1053841541"]
    assert set(row) == set(MANIFEST_KEYS)
    assert row["uri"] == f"{tmp_path}/027701_027750/1053841541.mp4"
    assert row["caption"] == ("Travel blogger shoot a story on top of mountains. "
                              "young man holds camera in forest.")
    assert (row["start_s"], row["end_s"]) == (0.0, 17.0)
    assert (row["source"], row["split"]) == ("webvid", "train")
    assert row["labels"] is None and row["conversations"] is None
    assert json.loads(row["meta"]) == {
        "page_idx": 27732,
        "content_url": "https://ak.picdn.net/shutterstock/videos/1053841541/preview/"
                       "stock-footage-travel-blogger-shoot-a-story-on-top-of-mountains-young-"
                       "man-holds-camera-in-forest.mp4"}
    assert by_id["webvid_29797315"]["end_s"] == 60.0


def test_webvid_no_check_split_limit_and_quoted_caption() -> None:
    result = webvid.load(WEBVID_SAMPLE, "s3://corpora/webvid/videos", split="val",
                         check_files=False)
    assert len(result.rows) == 20 and result.errors == []
    row = next(r for r in result.rows if r["clip_id"] == "webvid_1020335461")
    assert row["caption"] == "Moroccan flag waving in the wind in medieval town essaouira, morocco"
    assert row["uri"] == "s3://corpora/webvid/videos/000851_000900/1020335461.mp4"
    assert row["split"] == "val" and row["end_s"] == 5.0
    assert len(webvid.load(WEBVID_SAMPLE, "/nonexistent", check_files=False, limit=3).rows) == 3


def test_webvid_malformed_rows(tmp_path: Path) -> None:
    csv_path = tmp_path / "results_2M_val.csv"
    csv_path.write_text(
        "videoid,name,page_idx,page_dir,duration,contentUrl\n"
        "1066692955,Aerial view of a lake,1,000001_000050,PT00H00M20.5S,https://x/a.mp4\n"
        "1066692956,Dog running,2,000001_000050,20 seconds,https://x/b.mp4\n"
        "1066692957,,3,000001_000050,PT00H00M08S,https://x/c.mp4\n"
        "1066692958,Cat,three,000001_000050,PT00H00M08S,https://x/d.mp4\n"
        "1066692959,Short row\n")
    result = webvid.load(str(csv_path), str(tmp_path), check_files=False)
    assert [r["clip_id"] for r in result.rows] == ["webvid_1066692955"]
    assert result.rows[0]["end_s"] == 20.5
    bad = errors_by(result, "bad_metadata")
    assert len(bad) == len(result.errors) == 4
    assert [e["clip_id"] for e in bad] == ["webvid_1066692956", "webvid_1066692957",
                                           "webvid_1066692958", "webvid_1066692959"]
    assert all(e["stage"] == "manifest" for e in bad)
    assert "row 3 " in bad[0]["message"] and "20 seconds" in bad[0]["message"]
    assert "row 4 " in bad[1]["message"] and "name" in bad[1]["message"]
    assert "row 6 " in bad[3]["message"] and "duration" in bad[3]["message"]


def test_webvid_wrong_header_raises(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("id,caption\n1,x\n")
    with pytest.raises(ValueError, match="not a WebVid CSV"):
        webvid.load(str(path), str(tmp_path))


# --- VGGSound ---------------------------------------------------------------------------

VGGSOUND_CSV = (
    '---g-f_I2yQ,1,"people marching, crowd cheering",test\n'
    "--0PQM4-hqg,30,waterfall burbling,train\n"
    "--56QUhyDQM,185,playing tennis,train\n"
    "-0DLPzsiXXE,abc,dog barking,train\n"
    "-1BvDqcKx2k,40,train\n"
    "--aE2O5G5WE,0,\"driving motorcycle\",test\n"
)


def test_vggsound_rows_quoted_label_and_missing_files(tmp_path: Path) -> None:
    meta = tmp_path / "vggsound.csv"
    meta.write_text(VGGSOUND_CSV)
    touch(tmp_path / "video", "---g-f_I2yQ_000001.mp4", "--0PQM4-hqg_000030.mp4")
    result = vggsound.load(str(meta), str(tmp_path / "video"))
    assert [r["clip_id"] for r in result.rows] == ["vggsound_---g-f_I2yQ_000001",
                                                   "vggsound_--0PQM4-hqg_000030"]
    first = result.rows[0]
    assert first["labels"] == ["people marching, crowd cheering"]
    assert first["uri"] == f"{tmp_path}/video/---g-f_I2yQ_000001.mp4"
    assert (first["start_s"], first["end_s"], first["split"]) == (0.0, 10.0, "test")
    assert first["caption"] is None and first["source"] == "vggsound"
    assert result.rows[1]["split"] == "train"
    assert [e["clip_id"] for e in errors_by(result, "missing_file")] == [
        "vggsound_--56QUhyDQM_000185", "vggsound_--aE2O5G5WE_000000"]
    bad = errors_by(result, "bad_metadata")
    assert [e["clip_id"] for e in bad] == ["vggsound_-0DLPzsiXXE", "vggsound_-1BvDqcKx2k"]
    assert "row 4 " in bad[0]["message"] and "'abc'" in bad[0]["message"]
    assert "row 5 " in bad[1]["message"] and "4 columns" in bad[1]["message"]
    assert len(result.errors) == 4


def test_vggsound_split_filter_and_header(tmp_path: Path) -> None:
    meta = tmp_path / "vggsound_with_header.csv"
    meta.write_text("youtube_id,start_seconds,label,split\n" + VGGSOUND_CSV)
    test_rows = vggsound.load(str(meta), "s3://av/vggsound", split="test", check_files=False)
    assert [r["clip_id"] for r in test_rows.rows] == ["vggsound_---g-f_I2yQ_000001",
                                                      "vggsound_--aE2O5G5WE_000000"]
    assert test_rows.rows[1]["labels"] == ["driving motorcycle"]
    assert test_rows.rows[1]["uri"] == "s3://av/vggsound/--aE2O5G5WE_000000.mp4"
    assert test_rows.errors[0]["clip_id"] == "vggsound_-1BvDqcKx2k"  # 3 columns: no split
    train = vggsound.load(str(meta), "/v", split="train", check_files=False)
    assert len(train.rows) == 2 and len(train.errors) == 2
    assert len(vggsound.load(str(meta), "/v", check_files=False, limit=2).rows) == 2


# --- ACAV100M ---------------------------------------------------------------------------

def test_acav_csv_with_header(tmp_path: Path) -> None:
    meta = tmp_path / "acav100m_clips.csv"
    meta.write_text("youtube_id,start,end\n"
                    "-0DLPzsiXXE,30.0,40.0\n"
                    "-0DLPzsiXXE,40,50.5\n"
                    "xJ8w3Gm_kU4,120.5,130.5\n"
                    "Zb1Kq7fYx0A,12.0,12.0\n"
                    "Qw3rTy_uI9o,ten,20\n")
    touch(tmp_path / "videos", "-0DLPzsiXXE.mp4")
    result = acav.load(str(meta), str(tmp_path / "videos"))
    assert [r["clip_id"] for r in result.rows] == ["acav_-0DLPzsiXXE_30.00_40.00",
                                                   "acav_-0DLPzsiXXE_40.00_50.50"]
    row = result.rows[1]
    assert row["uri"] == f"{tmp_path}/videos/-0DLPzsiXXE.mp4"
    assert (row["start_s"], row["end_s"], row["source"], row["split"]) == (
        40.0, 50.5, "acav100m", "train")
    assert [e["clip_id"] for e in errors_by(result, "missing_file")] == [
        "acav_xJ8w3Gm_kU4_120.50_130.50"]
    bad = errors_by(result, "bad_metadata")
    assert [e["clip_id"] for e in bad] == ["acav100m_Zb1Kq7fYx0A", "acav100m_Qw3rTy_uI9o"]
    assert "row 5 " in bad[0]["message"] and "start=12.0 end=12.0" in bad[0]["message"]
    assert "row 6 " in bad[1]["message"]


def test_acav_tsv_without_header(tmp_path: Path) -> None:
    meta = tmp_path / "clips.tsv"
    meta.write_text("\n-0DLPzsiXXE\t0\t10\nxJ8w3Gm_kU4\t5.25\t15.25\n")
    result = acav.load(str(meta), "s3://acav/videos", split="val", check_files=True)
    assert [r["clip_id"] for r in result.rows] == ["acav_-0DLPzsiXXE_0.00_10.00",
                                                   "acav_xJ8w3Gm_kU4_5.25_15.25"]
    assert result.rows[1]["uri"] == "s3://acav/videos/xJ8w3Gm_kU4.mp4"
    assert result.rows[1]["split"] == "val" and result.errors == []


# --- AudioCaps --------------------------------------------------------------------------

AUDIOCAPS_CSV = (
    "audiocap_id,youtube_id,start_time,caption\n"
    "97151,vfY_TJq7n_U,130,Rustling occurs as a person talks\n"
    "97152,vfY_TJq7n_U,130,\"A man speaks, and leaves rustle\"\n"
    "103549,GbMgCDzjL8k,20,Multiple clanging and clanking sounds\n"
    "103550,r1nicOVtvkQ,x,A woman talks nearby as water pours\n"
    "103551,,30,Birds chirp\n"
)


def test_audiocaps_windowed_full_videos(tmp_path: Path) -> None:
    meta = tmp_path / "val.csv"
    meta.write_text(AUDIOCAPS_CSV)
    touch(tmp_path / "yt", "vfY_TJq7n_U.mp4")
    result = audiocaps.load(str(meta), str(tmp_path / "yt"), split="val")
    assert [r["clip_id"] for r in result.rows] == ["audiocaps_97151", "audiocaps_97152"]
    assert {r["uri"] for r in result.rows} == {f"{tmp_path}/yt/vfY_TJq7n_U.mp4"}
    second = result.rows[1]
    assert second["caption"] == "A man speaks, and leaves rustle"
    assert (second["start_s"], second["end_s"], second["split"]) == (130.0, 140.0, "val")
    assert json.loads(second["meta"]) == {"youtube_id": "vfY_TJq7n_U", "start_time": 130.0}
    assert [e["clip_id"] for e in errors_by(result, "missing_file")] == ["audiocaps_103549"]
    bad = errors_by(result, "bad_metadata")
    assert [e["clip_id"] for e in bad] == ["audiocaps_103550", "audiocaps_103551"]
    assert "row 5 " in bad[0]["message"] and "row 6 " in bad[1]["message"]
    assert "youtube_id" in bad[1]["message"]


def test_audiocaps_precut_template(tmp_path: Path) -> None:
    meta = tmp_path / "train.csv"
    meta.write_text(AUDIOCAPS_CSV)
    result = audiocaps.load(str(meta), "s3://ac/clips", check_files=False, windowed=False,
                            filename_template="{youtube_id}_{start_time:06d}.wav")
    assert len(result.rows) == 3 and len(result.errors) == 2
    row = result.rows[2]
    assert row["uri"] == "s3://ac/clips/GbMgCDzjL8k_000020.wav"
    assert (row["start_s"], row["end_s"], row["split"]) == (0.0, 10.0, "train")
    with pytest.raises(ValueError, match="filename_template"):
        audiocaps.load(str(meta), "/x", filename_template="{ytid}.mp4")


# --- JSONL ------------------------------------------------------------------------------

def test_jsonl_rows_aliases_and_errors(tmp_path: Path) -> None:
    convs = [{"role": "system", "content": "You watch and listen."},
             {"role": "user", "content": "<AUD_VIS> What makes the sound?"},
             {"role": "assistant", "content": "A violin being played."}]
    lines = [
        {"clip_id": "qa_0001", "video": "clips/-0DLPzsiXXE.mp4", "start_s": 0, "end_s": 8.5,
         "conversations": convs, "task": "avqa", "meta": {"question_type": "what"}},
        {"clip_id": "qa_0002", "uri": "s3://bucket/xJ8w3Gm_kU4.mp4", "caption": "a dog",
         "labels": ["dog", "bark"], "source": "in_house", "split": "test"},
        {"clip_id": "qa_0003", "path": "clips/missing.mp4"},
        {"clip_id": "qa_0004", "uri": "clips/-0DLPzsiXXE.mp4",
         "conversations": [{"role": "human", "content": "hi"}]},
        {"clip_id": "qa_0005"},
        {"clip_id": "qa_0006", "uri": "clips/-0DLPzsiXXE.mp4", "start_s": "zero"},
    ]
    text = "\n".join(json.dumps(x) for x in lines[:3]) + "\n{not json\n\n" + \
        "\n".join(json.dumps(x) for x in lines[3:]) + "\n"
    meta = tmp_path / "instruct.jsonl"
    meta.write_text(text)
    touch(tmp_path, "clips/-0DLPzsiXXE.mp4")
    result = jsonl.load(str(meta))
    assert [r["clip_id"] for r in result.rows] == ["qa_0001", "qa_0002"]
    first, second = result.rows
    assert first["uri"] == f"{tmp_path}/clips/-0DLPzsiXXE.mp4"
    assert (first["start_s"], first["end_s"]) == (0.0, 8.5)
    assert first["conversations"] == convs
    assert (first["source"], first["split"], first["caption"]) == ("jsonl", "train", None)
    assert json.loads(first["meta"]) == {"task": "avqa", "question_type": "what"}
    assert second["uri"] == "s3://bucket/xJ8w3Gm_kU4.mp4"
    assert (second["labels"], second["source"], second["split"]) == (
        ["dog", "bark"], "in_house", "test")
    assert second["meta"] is None
    assert [e["clip_id"] for e in errors_by(result, "missing_file")] == ["qa_0003"]
    bad = errors_by(result, "bad_metadata")
    assert [e["clip_id"] for e in bad] == ["jsonl_line4", "qa_0004", "qa_0005", "qa_0006"]
    assert "line 4 " in bad[0]["message"]
    assert "line 6 " in bad[1]["message"] and "conversations[0]" in bad[1]["message"]
    assert "line 7 " in bad[2]["message"] and "uri" in bad[2]["message"]
    assert "line 8 " in bad[3]["message"] and "start_s" in bad[3]["message"]


def test_jsonl_media_root(tmp_path: Path) -> None:
    meta = tmp_path / "m.jsonl"
    meta.write_text('{"clip_id": "a", "uri": "./x/a.mp4"}\n{"clip_id": "b", "uri": "/abs/b.mp4"}\n')
    result = jsonl.load(str(meta), "s3://media/root", check_files=False)
    assert [r["uri"] for r in result.rows] == ["s3://media/root/x/a.mp4", "/abs/b.mp4"]
    assert len(jsonl.load(str(meta), check_files=False, limit=1).rows) == 1


# --- registry, dedupe, manifest files ---------------------------------------------------

def test_build_manifest_registry_and_dedupe(tmp_path: Path) -> None:
    assert set(ADAPTERS) == {"webvid", "vggsound", "acav", "audiocaps", "jsonl"}
    meta = tmp_path / "clips.csv"
    meta.write_text("-0DLPzsiXXE,30,40\n-0DLPzsiXXE,30.0,40.0\nxJ8w3Gm_kU4,0,10\n")
    result = build_manifest("acav", metadata=str(meta), media_root="s3://acav",
                            check_files=False)
    assert [r["clip_id"] for r in result.rows] == ["acav_-0DLPzsiXXE_30.00_40.00",
                                                   "acav_xJ8w3Gm_kU4_0.00_10.00"]
    assert [(e["clip_id"], e["error"]) for e in result.errors] == [
        ("acav_-0DLPzsiXXE_30.00_40.00", "duplicate_clip_id")]
    webvid_result = build_manifest("webvid", metadata=WEBVID_SAMPLE, media_root=str(tmp_path))
    assert len(webvid_result.rows) == 0 and len(webvid_result.errors) == 20
    with pytest.raises(ValueError, match="known: acav, audiocaps, jsonl, vggsound, webvid"):
        build_manifest("synthetic", metadata="x")


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_manifest_round_trip(tmp_path: Path, suffix: str) -> None:
    meta = tmp_path / "in.jsonl"
    meta.write_text(json.dumps({
        "clip_id": "qa_0001", "uri": "s3://b/-0DLPzsiXXE.mp4", "start_s": 1.5, "end_s": 9.0,
        "labels": ["violin"], "caption": "a violin",
        "conversations": [{"role": "user", "content": "<AUD_VIS> Describe."},
                          {"role": "assistant", "content": "A violin plays."}]}) + "\n")
    rows = jsonl.load(str(meta)).rows
    rows += vggsound.load(str(_write(tmp_path / "v.csv", VGGSOUND_CSV)), "/v",
                          check_files=False).rows
    out = write_manifest(rows, str(tmp_path / f"manifest{suffix}"))
    back = read_manifest(out)
    assert back == rows
    assert len(back) == 5
    assert back[0]["conversations"][0] == {"role": "user", "content": "<AUD_VIS> Describe."}
    assert back[1]["conversations"] is None and back[1]["labels"] == [
        "people marching, crowd cheering"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
