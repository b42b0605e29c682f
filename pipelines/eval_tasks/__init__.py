"""Evaluation tasks: annotation adapters that turn each benchmark's own files into items.

The AVEB / SAVE benchmark tasks of the FAVOR and video-SALMONN papers, plus our own
``jsonl`` format and the synthetic corpus. ``load_items(name, source)`` is the one entry
point; each adapter's module docstring says which files it reads and where they come from.
"""

from __future__ import annotations

from typing import Any

from pipelines.eval_tasks.av import load_avm, load_avsd, load_avssd
from pipelines.eval_tasks.base import Adapter, AnnotationSource
from pipelines.eval_tasks.captions import load_audiocaps, load_flickr30k
from pipelines.eval_tasks.generic import load_jsonl
from pipelines.eval_tasks.speech import load_how2, load_librispeech
from pipelines.eval_tasks.synthetic import load_synthetic
from pipelines.eval_tasks.vqa import load_gqa, load_music_avqa, load_nextqa, load_textvqa

ADAPTERS: dict[str, Adapter] = {
    "librispeech": load_librispeech,
    "how2": load_how2,
    "audiocaps": load_audiocaps,
    "flickr30k": load_flickr30k,
    "textvqa": load_textvqa,
    "gqa": load_gqa,
    "nextqa": load_nextqa,
    "music_avqa": load_music_avqa,
    "avsd": load_avsd,
    "avssd": load_avssd,
    "avm": load_avm,
    "jsonl": load_jsonl,
    "synthetic": load_synthetic,
}


def load_items(adapter: str, src: AnnotationSource, limit: int | None = None
               ) -> list[dict[str, Any]]:
    """The items of one task: ``ADAPTERS[adapter](src)``, the first ``limit`` of them.

    Raises ValueError for an unknown adapter, a negative limit, or two items with one id
    (ids key the predictions and scores, so a clash would silently drop a question).
    """
    if adapter not in ADAPTERS:
        raise ValueError(f"unknown annotation adapter {adapter!r} (known: {sorted(ADAPTERS)})")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    items = ADAPTERS[adapter](src)
    seen: set[str] = set()
    for it in items:
        if it["id"] in seen:
            raise ValueError(f"{adapter}: item id {it['id']!r} appears more than once in "
                             f"{src.annotations}")
        seen.add(it["id"])
    return items if limit is None else items[:limit]
