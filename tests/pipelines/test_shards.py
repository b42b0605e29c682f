"""Feature shards on disk: exactly-once repair and the errors table's life cycle."""

import numpy as np
import pyarrow.parquet as pq

from pipelines import shards
from pipelines.corpora.base import error_row


def _row(cid: str, t: int = 2) -> dict:
    return {"clip_id": cid, "source": "s", "split": "train", "uri": f"/m/{cid}.mp4",
            "start_s": None, "duration_s": t / 2, "fps": 2.0, "truncated": False,
            "has_video": True, "has_audio": True, "caption": cid, "labels": None,
            "conversations": [{"role": "user", "content": "q"}], "meta": None,
            "video": np.ones((t, 3, 4), np.float32), "audio": np.ones((t * 25, 4), np.float32)}


def test_dedupe_keeps_each_clip_once(tmp_path):
    out = str(tmp_path)
    shards.write_features(out, [_row("a"), _row("b")], {"k": 1})
    shards.write_features(out, [_row("b", 4), _row("c")], {"k": 1})
    shards.write_features(out, [_row("a")], {"k": 1})
    assert shards.dedupe_features(out) == 2
    table = pq.read_table(tmp_path / "features")
    assert sorted(table.column("clip_id").to_pylist()) == ["a", "b", "c"]
    assert len(list((tmp_path / "features").glob("*.parquet"))) == 2  # the all-repeat file went
    assert shards.read_feature_metadata(out) == {"k": 1}
    assert shards.dedupe_features(out) == 0
    video = table.column("video").to_pylist()[0]
    assert np.asarray(video).dtype == np.float16


def test_errors_consolidate_newest_and_drop_recovered(tmp_path):
    out = str(tmp_path)
    shards.write_errors(out, [error_row("x", "/x", "decode", "old", "m"),
                              error_row("y", "/y", "decode", "corrupt", "m")])
    assert shards.consolidate_errors(out).num_rows == 2
    shards.write_errors(out, [error_row("x", "/x", "fetch", "missing_file", "m")])
    shards.write_features(out, [_row("y")], {})
    table = shards.consolidate_errors(out)
    assert table.to_pylist() == [error_row("x", "/x", "fetch", "missing_file", "m")]
    assert [p.name for p in (tmp_path / "errors").iterdir()] == ["errors.parquet"]


def test_error_parts_fold_in_creation_order(tmp_path):
    out = str(tmp_path)
    for reason in ("first", "second", "third"):
        shards.write_errors(out, [error_row("z", "/z", "decode", reason, "m")])
    assert shards.consolidate_errors(out).column("error").to_pylist() == ["third"]
