"""A benchmark corpus of N distinct clips replicated from a small corpus rendered elsewhere.

Why: the GPU machines the extraction benchmark runs on have no ffmpeg, so they cannot render
a synthetic corpus (``avray synth``). One is rendered on another host and carried over,
and this module stretches it to the N clips a run asks for. Repeating its manifest rows
would not do (the job drops rows whose clip id repeats), so row ``i`` past the corpus's own
``m`` rows is a copy of clip ``i % m`` under a new file name and clip id: every row is a
distinct file with a unique id that the job really opens and decodes like any other clip.

A carried corpus keeps the absolute paths of the machine that rendered it in its
manifest.jsonl; they are resolved to the same file names under ``DIR/media/`` (or ``DIR``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
from typing import Any

from pipelines.corpora.base import read_manifest, write_manifest


def _resolve_media(uri: str, corpus_dir: str) -> str:
    """A manifest's media path, or the same file name under the corpus directory: a corpus
    rendered on another machine keeps that machine's absolute paths in its manifest."""
    if os.path.isfile(uri):
        return os.path.abspath(uri)
    name = os.path.basename(uri)
    for candidate in (os.path.join(corpus_dir, "media", name), os.path.join(corpus_dir, name)):
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise FileNotFoundError(f"{uri}: not found, nor as {name} under {corpus_dir}")


def replicate_corpus(corpus_dir: str, clips: int, out_dir: str) -> str:
    """A manifest of ``clips`` rows drawn from ``corpus_dir`` (cycling), written to
    ``out_dir``; the manifest path.

    Past the corpus's own ``m`` rows, row ``i`` is a copy of clip ``i % m`` under a new file
    name and clip id, so every row is a distinct file with a unique id that the job opens
    and decodes like any other clip (the job drops rows whose id repeats).
    """
    rows = read_manifest(os.path.join(corpus_dir, "manifest.jsonl"))
    if not rows:
        raise ValueError(f"{corpus_dir}/manifest.jsonl has no rows")
    media = os.path.join(out_dir, "media")
    os.makedirs(media, exist_ok=True)
    out_rows = []
    for i in range(clips):
        row, copy = dict(rows[i % len(rows)]), i // len(rows)
        src = _resolve_media(row["uri"], corpus_dir)
        if copy:
            stem, ext = os.path.splitext(os.path.basename(src))
            row["clip_id"] = f"{row['clip_id']}-r{copy}"
            dst = os.path.join(media, f"{stem}-r{copy}{ext}")
            if not os.path.isfile(dst) or os.path.getsize(dst) != os.path.getsize(src):
                shutil.copyfile(src, dst)
            src = dst
        row["uri"] = src
        out_rows.append(row)
    return write_manifest(out_rows, os.path.join(out_dir, "manifest.jsonl"))


def cached_copies(corpus_dir: str, clips: int, workdir: str) -> str:
    """``replicate_corpus`` into ``workdir/corpus-<clips>-<hash of the corpus path>``, so
    runs over different carried corpora never share (or overwrite) each other's copies."""
    src = os.path.abspath(corpus_dir)
    tag = hashlib.sha1(src.encode()).hexdigest()[:8]
    return replicate_corpus(src, clips, os.path.join(workdir, f"corpus-{clips}-{tag}"))


def describe(corpus_dir: str, manifest: str) -> dict[str, Any]:
    """What a replicated corpus holds, for the results: its source, mean clip span and frame
    size (read from the rows, since ``--duration``/``--size`` describe only rendered ones)."""
    rows = read_manifest(manifest)
    spans = [r["end_s"] - (r["start_s"] or 0.0) for r in rows if r["end_s"] is not None]
    meta = json.loads(rows[0]["meta"] or "{}")
    return {"corpus": f"{os.path.abspath(corpus_dir)} (replicated)",
            "clip_seconds": statistics.fmean(spans) if spans else None,
            "size": f"{meta['width']}x{meta['height']}" if "width" in meta else None}
