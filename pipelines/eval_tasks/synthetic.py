"""The synthetic corpus (``pipelines.corpora.synthetic``) as evaluation items.

Its manifest rows carry the whole clip plan in ``meta``, so every question has one right
answer and a task family (vision, audio, sync, order, speech). Options:
    families        list of families to keep (default: all)
    all_questions   true: every well-posed question of a clip (``synthetic.candidates``),
                    false (default): the clip's own QA list, as trained on
    caption         true: one captioning item per clip instead of questions
``split`` filters the manifest's split column (default "test").
"""

from __future__ import annotations

import json
from typing import Any

from pipelines.corpora import synthetic
from pipelines.corpora.base import read_manifest
from pipelines.eval_tasks.base import AnnotationSource, item


def _questions(plan: dict[str, Any], every: bool) -> list[tuple[str, str, str]]:
    if every:
        return [(f, q, a) for f, pairs in synthetic.candidates(plan).items() for q, a in pairs]
    return [(qa["task"], qa["question"], qa["answer"]) for qa in plan["qa"]]


def load_synthetic(src: AnnotationSource) -> list[dict[str, Any]]:
    """Manifest rows → one item per (clip, question), id ``{clip_id}/{family}/{n}``."""
    opts = dict(src.options)
    families = opts.pop("families", None)
    every = bool(opts.pop("all_questions", False))
    captions = bool(opts.pop("caption", False))
    if opts:
        raise ValueError(f"synthetic adapter: unknown options {sorted(opts)}")
    split = src.split or "test"
    items = []
    for row in read_manifest(src.annotations):
        if row["split"] != split or not row["meta"]:
            continue
        plan = json.loads(row["meta"])
        base = {"clip_id": row["clip_id"], "has_audio": plan["has_audio"]}
        if captions:
            items.append(item(f"{row['clip_id']}/caption", video=row["uri"],
                              references=[row["caption"]], meta={**base, "family": "caption"}))
            continue
        for n, (family, question, answer) in enumerate(_questions(plan, every)):
            if families is None or family in families:
                items.append(item(f"{row['clip_id']}/{family}/{n}", video=row["uri"],
                                  question=question, references=[answer],
                                  meta={**base, "family": family}))
    return items
