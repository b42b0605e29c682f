"""Teaching bench-model's tiny vision tower: labels that agree with the decoded frames, and a
tower that tells the shapes apart afterwards where the random one does not."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from av_model.configlib import ConfigError, from_dict
from pipelines import bench_encoders
from pipelines.corpora import synthetic as synth


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    cfg = synth.SynthConfig(n=200, seed=3, min_duration_s=6.0, max_duration_s=7.0, min_shapes=2,
                            max_shapes=2, speech=False, split_fractions={"train": 0.75,
                                                                          "test": 0.25})
    out = tmp_path_factory.mktemp("synth")
    synth.generate(cfg, str(out), workers=2)
    return out / "manifest.jsonl"


def test_labels_name_the_shape_the_decoded_frame_shows(corpus):
    frames, labels = bench_encoders.train_frames(str(corpus), image_size=32, fps=2.0)
    assert frames.shape[1:] == (32, 32, 3) and len(frames) == len(labels) > 100
    rgb = np.array(list(synth.COLOURS.values()), np.float32) / 255.0  # (6, 3)
    shown = labels[:, 0] > 0
    assert 0.3 < shown.mean() < 1.0  # frames with a shape and frames between the slots
    # The brightest pixels of a frame with a shape have the labelled colour.
    for frame, (colour, _) in zip(frames[shown], labels[shown]):
        px = frame.reshape(-1, 3).astype(np.float32) / 255.0
        lit = px[px.sum(1) > 0.5 * px.sum(1).max()].mean(0)
        assert int(np.argmin(((rgb - lit) ** 2).sum(1))) == colour - 1
    # Blank frames are dark.
    assert frames[~shown].reshape(int((~shown).sum()), -1).max(1).mean() < 60


def _kind_probe(tower: str, train: tuple, test: tuple) -> float:
    """Held-out accuracy of a ridge classifier of the kind, fit on ``train`` frames' tokens."""
    from av_model.config import VisualEncoderConfig
    from av_model.encoders.visual import VisualEncoder

    enc = VisualEncoder(VisualEncoderConfig(tower), device="cpu")
    (xa, ya), (xb, yb) = [(enc.encode(f).reshape(len(f), -1), y) for f, y in (train, test)]
    mu, sd = xa.mean(0), xa.std(0) + 1e-6
    xa, xb = (xa - mu) / sd, (xb - mu) / sd
    w = np.linalg.solve(xa.T @ xa + 10.0 * np.eye(xa.shape[1]), xa.T @ np.eye(4)[ya])
    return float((np.argmax(xb @ w, 1) == yb).mean())


def test_taught_tower_tells_the_kinds_apart(corpus, tiny_encoders, tmp_path):
    torch.set_num_threads(2)
    cfg = bench_encoders.TeachConfig(steps=400)
    out = bench_encoders.teach_visual(tiny_encoders["visual"], str(tmp_path / "visual"),
                                      str(corpus), cfg, fps=2.0)
    record = json.loads((tmp_path / "visual" / "taught.json").read_text())
    assert record["steps"] == 400 and record["frames"] > 300
    # Test-split frames, which the tower never saw, against the train-split ones.
    rows = [json.loads(r) for r in open(corpus)]
    test_manifest = tmp_path / "test.jsonl"
    test_manifest.write_text("".join(json.dumps({**r, "split": "train"}) + "\n"
                                     for r in rows if r["split"] == "test"))
    sets = []
    for manifest in (corpus, test_manifest):
        frames, labels = bench_encoders.train_frames(str(manifest), 32, 2.0)
        shown = labels[:, 0] > 0
        sets.append((frames[shown], labels[shown, 1]))
    assert len(sets[1][1]) > 80
    before = _kind_probe(tiny_encoders["visual"], *sets)
    after = _kind_probe(out, *sets)
    assert after >= 0.85 and after >= before + 0.15, (before, after)
    # Reused when already taught; steps 0 keeps the random tower.
    mtime = (tmp_path / "visual" / "taught.json").stat().st_mtime
    assert bench_encoders.teach_visual(tiny_encoders["visual"], out, str(corpus), cfg, 2.0) == out
    assert (tmp_path / "visual" / "taught.json").stat().st_mtime == mtime
    keep = bench_encoders.TeachConfig(steps=0)
    assert bench_encoders.teach_visual(tiny_encoders["visual"], str(tmp_path / "x"),
                                       str(corpus), keep, 2.0) == tiny_encoders["visual"]
    assert not (tmp_path / "x").exists()


def test_bad_teach_config_names_the_field():
    from pipelines.bench_model import BenchConfig

    with pytest.raises(ConfigError) as err:
        from_dict(BenchConfig, {"teach_visual": {"steps": -1}})
    assert err.value.field == "teach_visual.steps"
