"""Corpus adapters: corpus metadata → manifest rows (see base.py for the contract).

Each adapter's ``load(metadata, media_root, ...)`` returns a ``ManifestResult`` (good rows
plus error rows); ``build_manifest`` picks one by name and drops duplicate clip_ids::

    from pipelines.corpora import build_manifest
    from pipelines.corpora.base import write_manifest
    result = build_manifest("webvid", metadata="s3://bucket/webvid/results_2M_train.csv",
                            media_root="s3://bucket/webvid/videos")
    write_manifest(result.rows, "s3://bucket/manifests/webvid.parquet")

The synthetic corpus is not registered here: its manifest is written by its generator
(pipelines/corpora/synthetic.py) together with the media it renders.
"""

from __future__ import annotations

from typing import Any, Callable

from pipelines.corpora import acav, audiocaps, jsonl, vggsound, webvid
from pipelines.corpora.base import ManifestResult, dedupe

ADAPTERS: dict[str, Callable[..., ManifestResult]] = {
    "webvid": webvid.load,
    "vggsound": vggsound.load,
    "acav": acav.load,
    "audiocaps": audiocaps.load,
    "jsonl": jsonl.load,
}


def build_manifest(name: str, **kwargs: Any) -> ManifestResult:
    """Run adapter ``name`` with ``kwargs`` and keep the first row per clip_id.

    Raises ValueError for an unknown adapter name.
    """
    try:
        adapter = ADAPTERS[name]
    except KeyError:
        raise ValueError(f"unknown corpus {name!r}; known: {', '.join(sorted(ADAPTERS))}") from None
    return dedupe(adapter(**kwargs))
