"""A deterministic synthetic audio-visual corpus whose content is known exactly.

Why it exists: the quickstart, the test suite and the connector benchmark need real mp4 clips
(H.264 + AAC, decoded by the same code as real corpora) whose every event is known, so that
audio-visual questions have one right answer. The benchmark asks about synchrony ("which
shape was on screen at the first beep?") and temporal order ("which appeared first?"): a
windowed causal Q-Former that keeps time should beat clip-level pooling on those.

What is in a clip (all drawn from ``numpy.random.default_rng([seed, index])``, so clip i is the
same whatever ``n`` is):
  * video: black background; 1–3 shapes of distinct colours (red green blue yellow magenta
    cyan) and distinct kinds (square circle triangle), ~35% of the frame, shown one after
    another in non-overlapping slots of [0.3, D-0.3], each moving in a straight line;
  * audio: a low (220/262/330 Hz) or high (880/1046/1318 Hz) tone of ≥ 1.5 s, 1–3 short
    2500 Hz beeps, each ≥ 0.5 s inside some shape's visible interval and ≥ 0.5 s apart;
    optional white noise; 44.1 kHz stereo by default (so decoders must resample);
  * speech (when ``espeak-ng`` is installed): one spoken word, away from the beeps;
  * some clips (``no_audio_fraction``) have no audio track at all.
The manifest row carries a caption, a multi-turn conversation and ``meta`` (JSON): the full
event timeline plus the QA list.

Run:
    avray synth --out data/synth --n 200 [--seed 0] [--config cfg.yaml] [key=value ...]
    python -m pipelines.corpora.synthetic --out data/synth --n 20 min_duration_s=10
    ray job submit --working-dir . -- python -m pipelines.corpora.synthetic --out /tmp/s --n 20
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from av_model.configlib import check, load_config
from pipelines.corpora import synthetic_render as render
from pipelines.corpora.base import manifest_row, write_manifest

log = logging.getLogger(__name__)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
    "yellow": (255, 255, 0), "magenta": (255, 0, 255), "cyan": (0, 255, 255)}
KINDS = ("square", "circle", "triangle")
TONE_HZ: dict[str, tuple[int, ...]] = {"low": (220, 262, 330), "high": (880, 1046, 1318)}
BEEP_HZ, BEEP_S = 2500, 0.15
WORDS = ("apple", "river", "seven", "purple", "window", "garden")
FAMILIES = ("vision", "audio", "sync", "order", "speech")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                "nine", "ten")
EDGE_S = 0.3  # no shape in the first and last 0.3 s
SIZE_FRAC = 0.35  # shape side/diameter as a fraction of the shorter frame side
BEEP_MARGIN_S = 0.5  # a beep sits this far inside its shape's visible interval
BEEP_GAP_S = 0.5  # silence between consecutive beeps
SPEECH_S = 0.8  # time window reserved for the spoken word (espeak words last ~0.45 s)
SPEECH_GAP_S = 0.25  # silence between the word's window and any beep
GRID_S = 0.01  # resolution of the beep / speech time candidates
# Bumped whenever the same config starts giving other plans, so caches keyed on the config
# (bench-model's data directory) do not pair new clips with stale features.
# 2: the first beep's shape drawn uniformly.
PLAN_VERSION = 2
SYNC_Q = "What colour was the shape on screen when the first beep sounded?"


def _default_task_mix() -> dict[str, float]:
    return {f: 1.0 for f in FAMILIES}


def _default_splits() -> dict[str, float]:
    return {"train": 0.8, "val": 0.1, "test": 0.1}


@dataclass(frozen=True)
class SynthConfig:
    """Everything that decides the corpus; (config, index) → one fixed clip."""

    n: int = 100  # number of clips (clip i does not depend on n)
    seed: int = 0  # corpus seed; clip i draws from default_rng([seed, i])
    min_duration_s: float = 8.0  # clip duration is uniform in [min, max], snapped to frames
    max_duration_s: float = 12.0
    fps: int = 10  # video frame rate of the mp4
    width: int = 96  # frame width in pixels (even: yuv420p)
    height: int = 96  # frame height in pixels (even: yuv420p)
    audio_rate: int = 44100  # audio sample rate of the mp4 (decoders resample to 16 kHz)
    stereo: bool = True  # two identical channels (decoders must downmix)
    min_shapes: int = 1  # shapes per clip, uniform in [min, max], at most len(KINDS)
    max_shapes: int = 3
    min_beeps: int = 1  # beeps per clip, uniform in [min, max] (fewer if they cannot fit)
    max_beeps: int = 3
    noise_level: float = 0.0  # std of added white noise (tone amplitude is 0.25)
    no_audio_fraction: float = 0.0  # fraction of clips written without an audio track
    speech: bool = True  # speak one word per clip when espeak-ng is on PATH
    task_mix: dict[str, float] = field(default_factory=_default_task_mix)  # family weights;
    # 0 or absent disables a family: vision, audio, sync, order, speech
    qa_per_clip: int | None = None  # None: one question per applicable family; N: N drawn
    # by task_mix weight without repeating a question
    split_fractions: dict[str, float] = field(default_factory=_default_splits)  # sum to 1
    source: str = "synthetic"  # manifest ``source`` column

    def __post_init__(self) -> None:
        check(self.n >= 0, "n", f"must be >= 0, got {self.n}")
        check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        check(self.min_duration_s > 0, "min_duration_s", "must be > 0")
        check(self.min_duration_s <= self.max_duration_s, "min_duration_s",
              f"must be <= max_duration_s ({self.min_duration_s} > {self.max_duration_s})")
        check(self.fps >= 1, "fps", f"must be >= 1, got {self.fps}")
        for name in ("width", "height"):
            value = getattr(self, name)
            check(value >= 16 and value % 2 == 0, name, f"must be even and >= 16, got {value}")
        check(self.audio_rate >= 8000, "audio_rate", "must be >= 8000 (beeps are 2500 Hz)")
        check(1 <= self.min_shapes <= self.max_shapes, "min_shapes",
              f"need 1 <= min_shapes <= max_shapes, got {self.min_shapes}, {self.max_shapes}")
        check(self.max_shapes <= len(KINDS), "max_shapes", f"must be <= {len(KINDS)}")
        check(0 <= self.min_beeps <= self.max_beeps, "min_beeps",
              f"need 0 <= min_beeps <= max_beeps, got {self.min_beeps}, {self.max_beeps}")
        check(self.max_beeps < len(NUMBER_WORDS), "max_beeps", f"must be < {len(NUMBER_WORDS)}")
        need = 2 * EDGE_S + self.max_shapes * 2.4  # each slot's beep window must be non-empty
        check(self.max_beeps == 0 or self.min_duration_s >= need, "min_duration_s",
              f"must be >= {need:.1f} s for {self.max_shapes} shapes with beeps")
        check(0.0 <= self.noise_level <= 0.2, "noise_level", "must be in [0, 0.2]")
        check(0.0 <= self.no_audio_fraction <= 1.0, "no_audio_fraction", "must be in [0, 1]")
        self._check_mixes()

    def _check_mixes(self) -> None:
        for key, weight in self.task_mix.items():
            check(key in FAMILIES, f"task_mix.{key}", f"unknown task family (known: {FAMILIES})")
            check(weight >= 0, f"task_mix.{key}", "weight must be >= 0")
        check(any(w > 0 for w in self.task_mix.values()), "task_mix", "needs a weight > 0")
        check(self.qa_per_clip is None or self.qa_per_clip >= 1, "qa_per_clip",
              "must be null or >= 1")
        check(len(self.split_fractions) > 0, "split_fractions", "must name at least one split")
        check(all(v >= 0 for v in self.split_fractions.values()), "split_fractions",
              "fractions must be >= 0")
        check(abs(sum(self.split_fractions.values()) - 1.0) < 1e-6, "split_fractions",
              f"must sum to 1, got {sum(self.split_fractions.values())}")


# ----------------------------------------------------------------------------- the plan


def _pick_split(cfg: SynthConfig, u: float) -> str:
    acc = 0.0
    for name, frac in cfg.split_fractions.items():
        acc += frac
        if u < acc:
            return name
    return list(cfg.split_fractions)[-1]


def _draw_n_frames(cfg: SynthConfig, rng: np.random.Generator) -> int:
    """Duration in whole frames, so video and audio end at the same instant."""
    lo, hi = math.ceil(cfg.min_duration_s * cfg.fps), math.floor(cfg.max_duration_s * cfg.fps)
    n = int(round(rng.uniform(cfg.min_duration_s, cfg.max_duration_s) * cfg.fps))
    return min(max(n, lo), hi) if lo <= hi else n


def _plan_shapes(cfg: SynthConfig, rng: np.random.Generator, duration: float,
                 size: int) -> list[dict[str, Any]]:
    """k shapes in consecutive equal slots of [EDGE_S, D-EDGE_S], each visible ≥ its middle half."""
    k = int(rng.integers(cfg.min_shapes, cfg.max_shapes + 1))
    colours = rng.choice(len(COLOURS), size=k, replace=False)
    kinds = rng.choice(len(KINDS), size=k, replace=False)
    slot = (duration - 2 * EDGE_S) / k
    lo = np.array([size / 2, size / 2])
    hi = np.array([cfg.width - size / 2, cfg.height - size / 2])
    shapes = []
    for j in range(k):
        a, b = EDGE_S + j * slot, EDGE_S + (j + 1) * slot
        t_on, t_off = rng.uniform(a, a + slot / 4), rng.uniform(b - slot / 4, b)
        start, end = rng.uniform(lo, hi), rng.uniform(lo, hi)  # centres (x, y), in pixels
        name = list(COLOURS)[colours[j]]
        shapes.append({"colour": name, "rgb": list(COLOURS[name]), "kind": KINDS[kinds[j]],
                       "t_on": round(float(t_on), 3), "t_off": round(float(t_off), 3),
                       "start": [round(float(v), 2) for v in start],
                       "end": [round(float(v), 2) for v in end]})
    return shapes


def _plan_tone(rng: np.random.Generator, duration: float) -> dict[str, Any]:
    cls = "low" if rng.random() < 0.5 else "high"
    hz = int(rng.choice(TONE_HZ[cls]))
    length = rng.uniform(1.5, max(1.5, min(4.0, duration - 0.2)))
    t_on = rng.uniform(0.0, duration - length)
    return {"class": cls, "hz": hz, "t_on": round(float(t_on), 3),
            "t_off": round(float(t_on + length), 3)}


def _grid(lo: float, hi: float) -> np.ndarray:
    """Candidate times on a GRID_S grid inside [lo, hi] (rounded, empty when hi < lo)."""
    first, last = math.ceil(lo / GRID_S - 1e-9), math.floor(hi / GRID_S + 1e-9)
    return np.round(np.arange(first, last + 1) * GRID_S, 3)


def _plan_beeps(cfg: SynthConfig, rng: np.random.Generator,
                shapes: list[dict[str, Any]]) -> list[float]:
    """Beep onsets, each ≥ BEEP_MARGIN_S inside a visible interval, ≥ BEEP_GAP_S apart.

    The first beep's shape is drawn uniformly among the shapes that can host one, then the
    rest greedily at random among later grid points. Why: drawing every onset uniformly put
    82% of first beeps on the first shape (the earliest of several draws leans early), so
    "which colour was on screen at the first beep" was answerable from the order of the
    shapes alone (benchmarks/RESULTS.md). If the drawn count cannot fit, fewer beeps are
    kept (the plan, not the draw, is the truth).
    """
    want = int(rng.integers(cfg.min_beeps, cfg.max_beeps + 1))
    per_shape = [_grid(s["t_on"] + BEEP_MARGIN_S, s["t_off"] - BEEP_MARGIN_S - BEEP_S)
                 for s in shapes]
    hosts = [c for c in per_shape if len(c)]
    if want == 0 or not hosts:
        return []
    host = hosts[int(rng.integers(len(hosts)))]
    beeps = [float(host[rng.integers(len(host))])]
    cands = np.concatenate(per_shape)
    cands = cands[cands >= beeps[0] + BEEP_S + BEEP_GAP_S - 1e-9]
    for _ in range(want - 1):
        if len(cands) == 0:
            break
        t = float(cands[rng.integers(len(cands))])
        beeps.append(t)
        cands = cands[np.abs(cands - t) >= BEEP_S + BEEP_GAP_S - 1e-9]
    return sorted(beeps)


def _plan_speech(rng: np.random.Generator, duration: float,
                 beeps: list[float]) -> dict[str, Any] | None:
    """A word in a SPEECH_S window that keeps SPEECH_GAP_S of silence from every beep."""
    word = WORDS[int(rng.integers(len(WORDS)))]
    cands = _grid(0.2, duration - SPEECH_S - 0.2)
    for b in beeps:
        cands = cands[(cands + SPEECH_S + SPEECH_GAP_S <= b) | (cands >= b + BEEP_S + SPEECH_GAP_S)]
    if len(cands) == 0:
        return None
    t_on = float(cands[rng.integers(len(cands))])
    return {"word": word, "t_on": t_on, "t_off": round(t_on + SPEECH_S, 3)}


def plan_clip(cfg: SynthConfig, index: int) -> dict[str, Any]:
    """The complete, pure plan of clip ``index``: timeline, render settings, caption, QA.

    Draw order is fixed (split, duration, audio flag, shapes, tone, beeps, speech, noise, QA),
    so switching a feature off never changes the content drawn before it.
    """
    rng = np.random.default_rng([cfg.seed, index])
    split = _pick_split(cfg, float(rng.random()))
    n_frames = _draw_n_frames(cfg, rng)
    duration = round(n_frames / cfg.fps, 6)
    has_audio = bool(rng.random() >= cfg.no_audio_fraction)
    size = int(round(SIZE_FRAC * min(cfg.width, cfg.height)))
    shapes = _plan_shapes(cfg, rng, duration, size)
    tone = _plan_tone(rng, duration)
    beeps = _plan_beeps(cfg, rng, shapes)
    speech = _plan_speech(rng, duration, beeps)
    noise_seed = int(rng.integers(2**31))
    if not render.speech_available(cfg.speech):
        speech = None
    plan: dict[str, Any] = {
        "clip_id": f"synth_{index:05d}", "index": index, "seed": cfg.seed, "split": split,
        "duration_s": duration, "n_frames": n_frames, "fps": cfg.fps, "width": cfg.width,
        "height": cfg.height, "size_px": size, "has_audio": has_audio,
        "audio_rate": cfg.audio_rate if has_audio else None,
        "channels": (2 if cfg.stereo else 1) if has_audio else None,
        "shapes": shapes, "tone": tone if has_audio else None,
        "beeps": beeps if has_audio else [], "beep_hz": BEEP_HZ, "beep_s": BEEP_S,
        "speech": speech if has_audio else None,
        "noise_level": cfg.noise_level if has_audio else 0.0, "noise_seed": noise_seed}
    plan["caption"] = caption(plan)
    plan["qa"] = plan_qa(cfg, rng, plan)
    return plan


# ----------------------------------------------------------------------------- captions and QA


def caption(plan: dict[str, Any]) -> str:
    """E.g. 'A red circle, then a blue square. A low tone and two beeps.'"""
    text = "A " + ", then a ".join(f"{s['colour']} {s['kind']}" for s in plan["shapes"]) + "."
    if not plan["has_audio"]:
        return text + " No sound."
    n = len(plan["beeps"])
    beeps = f" and {NUMBER_WORDS[n]} beep{'' if n == 1 else 's'}" if n else ""
    text += f" A {plan['tone']['class']} tone{beeps}."
    if plan["speech"]:
        text += f' A voice says "{plan["speech"]["word"]}".'
    return text


def candidates(plan: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """Every well-posed (question, answer) per family; empty lists where a family doesn't apply."""
    shapes, out = plan["shapes"], {f: [] for f in FAMILIES}
    for s in shapes:
        out["vision"] += [(f"What colour is the {s['kind']}?", s["colour"]),
                          (f"What shape is the {s['colour']} object?", s["kind"])]
    for i, a in enumerate(shapes):  # slots are in time order: shapes[i] precedes shapes[j]
        for b in shapes[i + 1:]:
            first = f"the {a['colour']} {a['kind']}"
            second = f"the {b['colour']} {b['kind']}"
            out["order"] += [(f"Which appeared first, {first} or {second}?", first),
                             (f"Which appeared first, {second} or {first}?", first)]
    if plan["has_audio"]:
        out["audio"] = [("Is the tone high or low?", plan["tone"]["class"]),
                        ("How many beeps are there?", NUMBER_WORDS[len(plan["beeps"])])]
        if plan["beeps"]:
            out["sync"] = [(SYNC_Q, render.visible_shape(plan, plan["beeps"][0])["colour"])]
        if plan["speech"]:
            out["speech"] = [("What word was spoken?", plan["speech"]["word"])]
    return out


def plan_qa(cfg: SynthConfig, rng: np.random.Generator, plan: dict[str, Any]) -> list[dict[str, str]]:
    """Pick the clip's questions: one per applicable family, or qa_per_clip by task_mix weight."""
    pools = {f: c for f, c in candidates(plan).items() if c and cfg.task_mix.get(f, 0.0) > 0}
    picks: list[tuple[str, tuple[str, str]]] = []
    if cfg.qa_per_clip is None:
        picks = [(f, c[int(rng.integers(len(c)))]) for f, c in pools.items()]
        picks = [picks[i] for i in rng.permutation(len(picks))]
    while cfg.qa_per_clip is not None and len(picks) < cfg.qa_per_clip and pools:
        fams = list(pools)
        weights = np.array([cfg.task_mix[f] for f in fams])
        fam = fams[int(rng.choice(len(fams), p=weights / weights.sum()))]
        picks.append((fam, pools[fam].pop(int(rng.integers(len(pools[fam]))))))
        if not pools[fam]:
            del pools[fam]
    return [{"task": f, "question": q, "answer": a} for f, (q, a) in picks]


def conversation(plan: dict[str, Any]) -> list[dict[str, str]] | None:
    """QA as alternating user/assistant turns; the first user turn opens with the media token.

    The token is <AUD_VIS> for clips with audio and <VIS> for clips without an audio track.
    """
    if not plan["qa"]:
        return None
    token = "<AUD_VIS>" if plan["has_audio"] else "<VIS>"
    turns = []
    for i, item in enumerate(plan["qa"]):
        question = f"{token}\n{item['question']}" if i == 0 else item["question"]
        turns += [{"role": "user", "content": question},
                  {"role": "assistant", "content": item["answer"]}]
    return turns


# ----------------------------------------------------------------------------- the corpus


def manifest_row_for(cfg: SynthConfig, plan: dict[str, Any], path: str) -> dict[str, Any]:
    """The manifest row of a planned clip; ``meta`` is the whole plan as JSON."""
    labels = [f"{s['colour']} {s['kind']}" for s in plan["shapes"]]
    if plan["tone"]:
        labels.append(f"{plan['tone']['class']} tone")
    return manifest_row(plan["clip_id"], os.path.abspath(path), cfg.source, plan["split"],
                        start_s=0.0, end_s=plan["duration_s"], caption=plan["caption"],
                        labels=labels, conversations=conversation(plan), meta=plan)


def generate(cfg: SynthConfig, out_dir: str, *, workers: int = 1) -> list[dict[str, Any]]:
    """Write ``{out_dir}/media/synth_{index:05d}.mp4`` and ``{out_dir}/manifest.jsonl``; return the rows.

    Clips whose mp4 already carries the same content hash are not rendered again.
    """
    out_dir = os.path.abspath(out_dir)
    media = os.path.join(out_dir, "media")
    os.makedirs(media, exist_ok=True)
    plans = [plan_clip(cfg, i) for i in range(cfg.n)]
    jobs = [(p, os.path.join(media, f"{p['clip_id']}.mp4")) for p in plans]
    if workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            rendered = pool.map(render.render_clip, jobs, chunksize=1)
    else:
        rendered = [render.render_clip(job) for job in jobs]
    rows = [manifest_row_for(cfg, plan, path) for plan, path in jobs]
    write_manifest(rows, os.path.join(out_dir, "manifest.jsonl"))
    log.info("rendered %d clips, %d already current", sum(rendered), len(jobs) - sum(rendered))
    return rows


def main(argv: list[str] | None = None) -> None:
    """CLI: ``avray synth --out DIR [--n N] [--seed S] [--config f.yaml] [key=value ...]``."""
    parser = argparse.ArgumentParser(prog="avray synth", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory (media/ + manifest.jsonl)")
    parser.add_argument("--n", type=int, default=None, help="number of clips (overrides config)")
    parser.add_argument("--seed", type=int, default=None, help="corpus seed (overrides config)")
    parser.add_argument("--config", default=None, help="YAML file with SynthConfig fields")
    parser.add_argument("--workers", type=int, default=1, help="parallel render processes")
    parser.add_argument("overrides", nargs="*", help="SynthConfig overrides, key=value")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    flags = [f"{k}={v}" for k, v in (("n", args.n), ("seed", args.seed)) if v is not None]
    cfg = load_config(SynthConfig, args.config, flags + list(args.overrides))
    rows = generate(cfg, args.out, workers=args.workers)
    hours = sum(r["end_s"] for r in rows) / 3600.0
    no_audio = sum('"has_audio": false' in r["meta"] for r in rows)
    log.info("synthetic corpus: %d clips, %.3f h of media (%d without audio), manifest %s",
             len(rows), hours, no_audio, os.path.join(os.path.abspath(args.out), "manifest.jsonl"))


if __name__ == "__main__":
    main()
