"""Shared helpers of the evaluation-adapter tests: exact expected items, sample writers."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from pipelines.eval_tasks import load_items
from pipelines.eval_tasks.base import ITEM_KEYS, AnnotationSource

MEDIA = "/data/media"


def row(id: str, references: list[str], *, video: str | None = None, audio: str | None = None,
        image: str | None = None, question: str = "", choices: list[str] | None = None,
        history: list[dict[str, str]] | None = None,
        meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The exact item dict an adapter must produce."""
    return {"id": id, "video": video, "audio": audio, "image": image, "question": question,
            "references": references, "choices": choices or [], "history": history or [],
            "meta": json.dumps(meta or {}, sort_keys=True)}


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


def write_json(path: Path, data: Any) -> str:
    return write(path, json.dumps(data, indent=1))


def load(adapter: str, annotations: str, media_root: str = MEDIA, split: str | None = None,
         **options: Any) -> list[dict[str, Any]]:
    items = load_items(adapter, AnnotationSource(annotations, media_root, split, options))
    assert all(tuple(it) == ITEM_KEYS for it in items)
    return items


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
