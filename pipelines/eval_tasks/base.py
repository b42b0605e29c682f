"""The evaluation item contract: every annotation adapter turns a dataset's own files into
these rows, and the evaluate job never looks at a dataset format again.

Item keys (one dict per question; plain JSON-able values so Ray Data can carry them):
    id          str, unique within the task (e.g. the utterance / question id)
    video       str | None   local path or s3:// URI of a video file (its audio track included)
    audio       str | None   local path or s3:// URI of an audio file (replaces a video's track)
    image       str | None   local path or s3:// URI of an image
    question    str          the dataset's question, or "" where the task prompt says it all
    references  list[str]    the accepted answers / reference captions / the transcript
    choices     list[str]    multiple-choice options in order ([] for open answers)
    history     list[{role, content}]  earlier dialogue turns (AVSD), [] for single turns
    meta        str          JSON of dataset extras (question type, family, ...), "{}" if none

Why one flat row: the harness formats the prompt from the task YAML (``{question}``,
``{choices}``), builds the same chat request as an API client would, and scores by
``references`` / ``choices`` alone, so a new dataset needs one adapter function and nothing
else.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from pipelines import storage

ITEM_KEYS = ("id", "video", "audio", "image", "question", "references", "choices", "history",
             "meta")


@dataclass(frozen=True)
class AnnotationSource:
    """Where one task's annotations and media are; ``options`` are adapter-specific."""

    annotations: str            # annotation file or directory (local path or s3://)
    media_root: str = ""        # directory holding the media files ("" = next to annotations)
    split: str | None = None    # adapter-specific split filter (e.g. "test", "val")
    options: dict[str, Any] = field(default_factory=dict)

    def media(self, *parts: str) -> str:
        """A media path under ``media_root`` (or the annotations' directory)."""
        root = self.media_root or _parent(self.annotations)
        return storage.join(root, *parts) if storage.is_s3(root) else os.path.join(root, *parts)


def _parent(uri: str) -> str:
    if storage.is_s3(uri):
        return uri.rstrip("/").rsplit("/", 1)[0]
    path = storage.local_path(uri)
    return path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))


def item(id: str, *, references: list[str] | str, question: str = "",
         video: str | None = None, audio: str | None = None, image: str | None = None,
         choices: list[str] | None = None, history: list[dict[str, str]] | None = None,
         meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """One evaluation item with every key present."""
    refs = [references] if isinstance(references, str) else [str(r) for r in references]
    if not refs:
        raise ValueError(f"item {id!r}: at least one reference answer is needed")
    return {"id": str(id), "video": video, "audio": audio, "image": image,
            "question": str(question), "references": refs,
            "choices": [str(c) for c in (choices or [])],
            "history": [{"role": str(t["role"]), "content": str(t["content"])}
                        for t in (history or [])],
            "meta": json.dumps(meta or {}, sort_keys=True)}


Adapter = Callable[[AnnotationSource], list[dict[str, Any]]]
