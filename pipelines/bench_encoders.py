"""Teach bench-model's tiny vision tower to see the synthetic shapes before it is frozen.

Why: the papers' connectors sit on pretrained encoders (CLIP / EVA ViTs, Whisper) that
already tell a circle from a square. The tiny tower with random weights does not: on the
synthetic frames a ridge probe reads the shape's colour at 99 % but its kind at 75 % (raw
pixels: 58 %), and with those features no connector learnt a vision question (every
bench-model run at chance, benchmarks/RESULTS.md). A tower taught for a few hundred steps to
name the visible shape's colour and kind (the stand-in for pretraining) reads both at
96–100 % on held-out clips, so vision, sync and order measure the connector and the LLM,
not a blind encoder.

What it learns from: the train-split clips only (the test clips stay unseen), decoded by the
same decoder and at the same frame rate as the extraction job, each frame labelled from the
clip's plan (the shape in the mp4 frame the decoder took, or nothing). Two linear heads
on the tower's pooled output; the heads are dropped, the tower is saved like a hub checkpoint
and then frozen by extraction and training as any pretrained tower would be.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from av_model.configlib import check

log = logging.getLogger("avray.bench_model")
# Bumped whenever the same config starts teaching another tower (labels, loss, recipe), so
# bench-model's data cache (keyed on it) never reuses features of an older one.
TEACH_VERSION = 1


@dataclass(frozen=True)
class TeachConfig:
    """How long the tiny vision tower is taught; steps 0 keeps the random tower."""

    steps: int = 400
    batch_size: int = 64
    lr: float = 3e-3

    def __post_init__(self) -> None:
        check(self.steps >= 0, "steps", "must be >= 0")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.lr > 0, "lr", "must be > 0")


def frame_labels(plan: dict, n_frames: int, fps: float) -> np.ndarray:
    """(T, 2) int: 1 + colour index and 1 + kind index of the shape in each decoded frame;
    0, 0 where none is. The decoder takes, for the centre time (t + 0.5) / fps, the mp4 frame
    shown then, rendered at its own start time (synthetic_render draws frame i at i / fps)."""
    from pipelines.corpora.synthetic import COLOURS, KINDS
    from pipelines.corpora.synthetic_render import visible_shape

    out = np.zeros((n_frames, 2), np.int64)
    for t in range(n_frames):
        shown = math.floor((t + 0.5) / fps * plan["fps"] + 1e-9) / plan["fps"]
        shape = visible_shape(plan, shown)
        if shape is not None:
            out[t] = (1 + list(COLOURS).index(shape["colour"]), 1 + KINDS.index(shape["kind"]))
    return out


def train_frames(manifest: str, image_size: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Decoded frames (N, S, S, 3) uint8 of the train-split clips and their (N, 2) labels."""
    from pipelines.media import DecodeConfig, decode_clip

    dcfg = DecodeConfig(fps=fps, frame_size=image_size)
    frames, labels = [], []
    with open(manifest) as f:
        for row in map(json.loads, f):
            if row.get("split") != "train":
                continue
            clip = decode_clip(row["uri"], dcfg, row.get("start_s"), row.get("end_s"))
            if clip.frames is None:
                continue
            frames.append(clip.frames)
            labels.append(frame_labels(json.loads(row["meta"]), len(clip.frames), fps))
    return np.concatenate(frames), np.concatenate(labels)


def teach_visual(tower: str, out: str, manifest: str, cfg: TeachConfig, fps: float,
                 seed: int = 0) -> str:
    """Copy the tower at ``tower`` to ``out`` taught on the manifest's train clips; returns
    ``out`` (reused when already there: the caller keys it on everything that decides it).

    The train clips are decoded here and again by extraction (~10 s on bench-model's 800
    clips): teaching must finish before extraction encodes anything, and keeping the frames
    for it would hold every clip's frames in memory."""
    import torch
    from transformers import CLIPVisionModel

    from av_model.config import VisualEncoderConfig
    from av_model.encoders.visual import visual_input_spec

    if cfg.steps == 0:
        return tower
    if (Path(out) / "taught.json").exists():
        return out
    start = time.perf_counter()
    spec = visual_input_spec(VisualEncoderConfig(tower))
    frames, labels = train_frames(manifest, spec.image_size, fps)
    pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, S, S)
    pixels = (pixels - torch.tensor(spec.mean).view(1, 3, 1, 1)) / \
        torch.tensor(spec.std).view(1, 3, 1, 1)
    targets = torch.from_numpy(labels)
    torch.manual_seed(seed)
    model = CLIPVisionModel.from_pretrained(tower)
    width = model.config.hidden_size
    heads = torch.nn.ModuleList([torch.nn.Linear(width, int(targets[:, i].max()) + 1)
                                 for i in range(2)])  # colour, kind (0 = nothing on screen)
    opt = torch.optim.AdamW(list(model.parameters()) + list(heads.parameters()), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(cfg.steps):
        pick = torch.randint(len(pixels), (cfg.batch_size,), generator=gen)
        pooled = model(pixel_values=pixels[pick]).pooler_output  # (B, D)
        loss = sum(torch.nn.functional.cross_entropy(head(pooled), targets[pick, i])
                   for i, head in enumerate(heads))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    tmp = Path(out + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(tower, tmp)  # the image processor and anything else beside the weights
    model.save_pretrained(tmp)
    record = {"frames": len(pixels), "steps": cfg.steps, "final_loss": float(loss),
              "seconds": round(time.perf_counter() - start, 1)}
    (tmp / "taught.json").write_text(json.dumps(record))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log.info("vision tower taught on %d train frames in %.0f s (loss %.3f)", len(pixels),
             record["seconds"], record["final_loss"])
    return out
