"""Teach bench-model's tiny towers to see the synthetic shapes and hear its sounds before
they are frozen.

Why: the papers' connectors sit on pretrained encoders (CLIP / EVA ViTs, Whisper) that
already tell a circle from a square and hear a short beep. The tiny towers with random
weights do not. On the synthetic frames a ridge probe reads the shape's colour at 99 % but
its kind at 75 % (raw pixels: 58 %); on the random Whisper's frames it finds a beep worse than
always answering "no beep", because random attention smears each frame over the window. With
those features no connector learnt a vision question or a beep count (benchmarks/RESULTS.md).
Towers taught for a few hundred steps (the stand-in for pretraining) read all of it on
held-out clips, so vision, audio, sync and order measure the connector and the LLM, not a
blind or deaf encoder.

What they learn from: the train-split clips only (the test clips stay unseen), decoded by
the same decoder as the extraction job, and labelled from each clip's plan:
- the vision tower, per decoded frame (same frame rate): the visible shape's colour and
  kind, or nothing;
- the Whisper encoder, per 20 ms encoder frame of the same 5 s windows extraction cuts:
  the tone (none / low / high), beep or not, and the spoken word (or none).
Linear heads on the tower's output; the heads are dropped, the tower is saved like a hub
checkpoint and then frozen by extraction and training as any pretrained tower would be.
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
TEACH_VERSION = 2  # 2: the audio tower is taught too


@dataclass(frozen=True)
class TeachConfig:
    """How long a tiny tower is taught; steps 0 keeps the random tower."""

    steps: int = 400
    batch_size: int = 64
    lr: float = 3e-3

    def __post_init__(self) -> None:
        check(self.steps >= 0, "steps", "must be >= 0")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.lr > 0, "lr", "must be > 0")


def audio_teach_config() -> TeachConfig:
    """Audio's defaults: a batch is 16 windows of 5 s (250 labelled frames each)."""
    return TeachConfig(steps=300, batch_size=16, lr=3e-3)


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
    frames, labels = [], []
    for plan, clip in _train_clips(manifest, fps, image_size):
        if clip.frames is not None:
            frames.append(clip.frames)
            labels.append(frame_labels(plan, len(clip.frames), fps))
    return np.concatenate(frames), np.concatenate(labels)


def audio_labels(plan: dict, n_frames: int, rate: float) -> np.ndarray:
    """(F, 3) int per encoder frame at ``rate`` Hz, from the frame's centre time: tone
    (0 none, 1 low, 2 high), beep (0 / 1) and spoken word (0 none, 1 + index in WORDS)."""
    from pipelines.corpora.synthetic import WORDS

    t = (np.arange(n_frames) + 0.5) / rate
    out = np.zeros((n_frames, 3), np.int64)
    tone = plan.get("tone")
    if tone:
        out[(t >= tone["t_on"]) & (t < tone["t_off"]), 0] = 1 + int(tone["class"] == "high")
    for onset in plan.get("beeps") or []:
        out[(t >= onset) & (t < onset + plan["beep_s"]), 1] = 1
    speech = plan.get("speech")
    if speech:
        out[(t >= speech["t_on"]) & (t < speech["t_off"]), 2] = 1 + WORDS.index(speech["word"])
    return out


def train_windows(manifest: str, window_samples: int, samples_per_frame: int
                  ) -> tuple[list[np.ndarray], np.ndarray]:
    """The train clips' 16 kHz audio cut as the encoder cuts it (windows of its context from
    the clip's start) and (W, F, 3) labels per encoder frame; -100 past a window's audio."""
    from av_model.encoders.audio import SAMPLE_RATE

    frames_per_window = window_samples // samples_per_frame
    waves, labels = [], []
    # Frames come with the audio: 1 fps at 32 px costs little (decord rejects tiny sizes).
    for plan, clip in _train_clips(manifest, 1.0, 32):
        if clip.audio is None or not len(clip.audio):
            continue
        lab = audio_labels(plan, math.ceil(len(clip.audio) / samples_per_frame),
                           SAMPLE_RATE / samples_per_frame)
        for w, first in enumerate(range(0, len(clip.audio), window_samples)):
            waves.append(clip.audio[first:first + window_samples])
            piece = np.full((frames_per_window, 3), -100, np.int64)
            own = lab[w * frames_per_window:(w + 1) * frames_per_window]
            piece[:len(own)] = own
            labels.append(piece)
    return waves, np.stack(labels)


def _train_clips(manifest: str, fps: float, frame_size: int):
    """(plan, decoded clip) of each train-split row, decoded as the extraction job does."""
    from pipelines.media import DecodeConfig, decode_clip

    dcfg = DecodeConfig(fps=fps, frame_size=frame_size)
    with open(manifest) as f:
        for row in map(json.loads, f):
            if row.get("split") == "train":
                yield json.loads(row["meta"]), decode_clip(row["uri"], dcfg, row.get("start_s"),
                                                           row.get("end_s"))


def _fit(model, heads, loss_of, n: int, cfg: TeachConfig, seed: int) -> float:
    """``cfg.steps`` AdamW steps on random batches of the ``n`` examples; the last loss."""
    import torch

    opt = torch.optim.AdamW(list(model.parameters()) + list(heads.parameters()), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    loss = torch.zeros(())
    for _ in range(cfg.steps):
        loss = loss_of(torch.randint(n, (cfg.batch_size,), generator=gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


def _save(tower: str, out: str, model, record: dict, start: float) -> str:
    """The taught weights beside a copy of everything else in ``tower`` (processor files),
    written to a temporary directory and renamed, so a half-written ``out`` never counts;
    ``record`` (+ the seconds since ``start``) goes to ``out/taught.json`` and the log."""
    record = {**record, "seconds": round(time.perf_counter() - start, 1)}
    log.info("%s taught: %s", tower, json.dumps(record))
    tmp = Path(out + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(tower, tmp)
    model.save_pretrained(tmp)
    (tmp / "taught.json").write_text(json.dumps(record))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


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

    def loss_of(pick: torch.Tensor) -> torch.Tensor:
        pooled = model(pixel_values=pixels[pick]).pooler_output  # (B, D)
        return sum(torch.nn.functional.cross_entropy(head(pooled), targets[pick, i])
                   for i, head in enumerate(heads))

    loss = _fit(model, heads, loss_of, len(pixels), cfg, seed)
    return _save(tower, out, model, {"frames": len(pixels), "steps": cfg.steps,
                                     "final_loss": loss}, start)


def teach_audio(tower: str, out: str, manifest: str, cfg: TeachConfig, seed: int = 0) -> str:
    """Copy the Whisper checkpoint at ``tower`` to ``out`` with its encoder taught to tell,
    in every 20 ms frame of the train clips, the tone (none / low / high), whether a beep
    sounds and which word is spoken; returns ``out`` (reused when already there).

    Why: the random tiny Whisper's attention smears the clip over time. A ridge probe on
    its frames of the test clips finds a beep less often than always answering "no beep"
    (78.6 % against 96.5 %), so no connector could count beeps or place the first one
    (benchmarks/RESULTS.md). Whisper itself resolves a 150 ms beep.

    The Whisper weights load twice (a frozen ``WhisperAudioEncoder`` for the extraction
    job's exact windowing and mel settings, then the whole model to train and save): the
    tiny checkpoint loads in milliseconds, and the windowing stays defined in one place."""
    import torch
    from transformers import WhisperModel

    from av_model.config import AudioEncoderConfig
    from av_model.encoders.audio import SAMPLE_RATE, WhisperAudioEncoder

    if cfg.steps == 0:
        return tower
    if (Path(out) / "taught.json").exists():
        return out
    start = time.perf_counter()
    frozen = WhisperAudioEncoder(AudioEncoderConfig(tower), device="cpu")  # its windowing
    waves, labels = train_windows(manifest, frozen.window_samples, frozen.samples_per_frame)
    mel = frozen.extractor(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt",
                           padding="max_length", max_length=frozen.window_samples,
                           truncation=True).input_features  # (W, n_mels, mel_frames)
    del frozen
    targets = torch.from_numpy(labels)  # (W, F, 3)
    torch.manual_seed(seed)
    model = WhisperModel.from_pretrained(tower)
    encoder, width = model.get_encoder(), model.config.d_model
    sizes = [int(targets[..., i].max()) + 1 for i in range(3)]
    heads = torch.nn.ModuleList([torch.nn.Linear(width, max(k, 2)) for k in sizes])

    def loss_of(pick: torch.Tensor) -> torch.Tensor:
        hidden = encoder(input_features=mel[pick]).last_hidden_state  # (B, F, D)
        return sum(torch.nn.functional.cross_entropy(head(hidden).flatten(0, 1),
                                                     targets[pick, :, i].flatten(),
                                                     ignore_index=-100)
                   for i, head in enumerate(heads))

    loss = _fit(encoder, heads, loss_of, len(mel), cfg, seed)
    return _save(tower, out, model, {"windows": len(mel), "steps": cfg.steps,
                                     "final_loss": loss}, start)
