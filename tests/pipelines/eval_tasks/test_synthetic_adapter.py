"""The synthetic adapter's options on a planned (not rendered) manifest: the plans alone
make the manifest rows, so no mp4 is written and the test costs milliseconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipelines.corpora import synthetic
from pipelines.corpora.base import manifest_row, write_manifest
from tests.pipelines.eval_tasks.helpers import load, row


@pytest.fixture()
def manifest(tmp_path: Path) -> tuple[str, dict[str, list[dict[str, Any]]], dict[str, str]]:
    """Eight planned clips over two splits, some without audio, plus a row from another
    corpus (no plan in ``meta``: not a synthetic clip, so no item)."""
    cfg = synthetic.SynthConfig(n=8, seed=0, speech=False, no_audio_fraction=0.3,
                                split_fractions={"train": 0.5, "test": 0.5})
    plans = [synthetic.plan_clip(cfg, i) for i in range(cfg.n)]
    uris = {p["clip_id"]: str(tmp_path / "media" / f"{p['clip_id']}.mp4") for p in plans}
    rows = [synthetic.manifest_row_for(cfg, p, uris[p["clip_id"]]) for p in plans]
    rows.append(manifest_row("other_0", str(tmp_path / "o.mp4"), "other", "test", caption="x"))
    by_split: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for p in plans:
        by_split[p["split"]].append(p)
    assert all(by_split.values()) and not all(p["has_audio"] for p in by_split["test"])
    return write_manifest(rows, str(tmp_path / "manifest.jsonl")), by_split, uris


def _meta(plan: dict[str, Any], family: str) -> dict[str, Any]:
    return {"clip_id": plan["clip_id"], "has_audio": plan["has_audio"], "family": family}


def test_default_is_each_test_clips_own_questions(manifest) -> None:
    path, by_split, uris = manifest
    expected = [row(f"{p['clip_id']}/{qa['task']}/{n}", [qa["answer"]], video=uris[p["clip_id"]],
                    question=qa["question"], meta=_meta(p, qa["task"]))
                for p in by_split["test"] for n, qa in enumerate(p["qa"])]
    assert load("synthetic", path) == expected
    train = load("synthetic", path, split="train")
    assert {it["id"].split("/")[0] for it in train} == {p["clip_id"] for p in by_split["train"]}


def test_caption_gives_one_item_per_clip(manifest) -> None:
    path, by_split, uris = manifest
    assert load("synthetic", path, caption=True) == [
        row(f"{p['clip_id']}/caption", [p["caption"]], video=uris[p["clip_id"]],
            meta=_meta(p, "caption")) for p in by_split["test"]]


def test_all_questions_and_families(manifest) -> None:
    path, by_split, uris = manifest
    every = load("synthetic", path, all_questions=True)
    assert every == [row(f"{p['clip_id']}/{f}/{n}", [a], video=uris[p["clip_id"]], question=q,
                         meta=_meta(p, f))
                     for p in by_split["test"]
                     for n, (f, q, a) in enumerate((f, q, a) for f, pairs in
                                                   synthetic.candidates(p).items()
                                                   for q, a in pairs)]
    assert len(every) > sum(len(p["qa"]) for p in by_split["test"])
    kept = load("synthetic", path, all_questions=True, families=["order", "audio"])
    assert kept == [it for it in every if it["id"].split("/")[1] in ("order", "audio")]
    assert {it["id"].split("/")[1] for it in kept} == {"order", "audio"}
    own = load("synthetic", path, families=["vision"])
    assert own == [it for it in load("synthetic", path) if it["id"].split("/")[1] == "vision"]
    assert len(own) == len(by_split["test"])   # one vision question per clip


def test_unknown_option_is_named(manifest) -> None:
    with pytest.raises(ValueError, match=r"synthetic adapter: unknown options \['captions'\]"):
        load("synthetic", manifest[0], captions=True)
