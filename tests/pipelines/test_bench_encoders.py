"""Teaching bench-model's tiny towers: labels that agree with the decoded frames and sound,
and towers that tell the shapes apart and hear the beeps afterwards where the random ones
do not."""

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


def _as_train(manifest, split: str, tmp_path):
    """A manifest of ``split``'s rows marked train (the loaders read train rows only)."""
    rows = [json.loads(r) for r in open(manifest)]
    out = tmp_path / f"{split}.jsonl"
    out.write_text("".join(json.dumps({**r, "split": "train"}) + "\n"
                           for r in rows if r["split"] == split))
    return out


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
    sets = []
    for manifest in (corpus, _as_train(corpus, "test", tmp_path)):
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


def test_audio_labels_mark_what_the_waveform_holds(corpus):
    waves, labels = bench_encoders.train_windows(str(corpus), window_samples=80000,
                                                 samples_per_frame=320)
    assert labels.shape == (len(waves), 250, 3) and len(waves) > 200
    beep_bin, seen = 2500 // 50, {"beep": 0, "quiet": 0}  # 320-sample frames: 50 Hz bins
    for wave, lab in zip(waves, labels):
        n = len(wave) // 320
        assert (lab[n + 1:] == -100).all() and (lab[:n] >= 0).all()
        frames = wave[:n * 320].reshape(n, 320)
        spectrum = np.abs(np.fft.rfft(frames * np.hanning(320), axis=1))  # (n, 161)
        for f in range(n):
            tone, beep, _ = lab[f]
            if beep and lab[max(f - 1, 0):f + 2, 1].all():  # inside a beep (not its edge
                # frames, half beep): its 2500 Hz is the strongest line of the frame
                assert abs(int(np.argmax(spectrum[f])) - beep_bin) <= 1
                seen["beep"] += 1
            elif 2 <= f < n - 2 and not lab[f - 2:f + 3, :2].any():
                assert np.sqrt((frames[f] ** 2).mean()) < 1e-3   # silence between sounds
                seen["quiet"] += 1
            elif tone and (lab[max(f - 2, 0):f + 3, 0] == tone).all() \
                    and not lab[max(f - 2, 0):f + 3, 1].any():
                high = int(np.argmax(spectrum[f])) * 50 > 600
                assert high == (tone == 2)
    assert seen["beep"] > 100 and seen["quiet"] > 100, seen


def _beep_probe(tower: str, train: tuple, test: tuple) -> float:
    """Balanced held-out accuracy (mean recall of beep and no-beep frames) of a ridge
    classifier fit on the ``train`` windows' encoder frames: beeps are ~4 % of frames."""
    from av_model.config import AudioEncoderConfig
    from av_model.encoders.audio import WhisperAudioEncoder

    enc = WhisperAudioEncoder(AudioEncoderConfig(tower), device="cpu")
    (xa, ya), (xb, yb) = [   # the encoder keeps only the frames of real audio
        (np.concatenate(feats), np.concatenate([lab[:len(f), 1] for f, lab in zip(feats, labels)]))
        for feats, labels in ((enc.encode(w), labels) for w, labels in (train, test))]
    mu, sd = xa.mean(0), xa.std(0) + 1e-6
    xa, xb = (xa - mu) / sd, (xb - mu) / sd
    weight = np.where(ya == 1, (ya == 0).sum() / (ya == 1).sum(), 1.0)[:, None]  # balance
    w = np.linalg.solve(xa.T @ (weight * xa) + 10.0 * np.eye(xa.shape[1]),
                        xa.T @ (weight * np.eye(2)[ya]))
    pred = np.argmax(xb @ w, 1)
    return float(np.mean([(pred[yb == c] == c).mean() for c in (0, 1)]))


def test_taught_whisper_hears_the_beeps(corpus, tiny_encoders, tmp_path):
    torch.set_num_threads(2)
    cfg = bench_encoders.audio_teach_config()
    out = bench_encoders.teach_audio(tiny_encoders["audio"], str(tmp_path / "audio"),
                                     str(corpus), cfg)
    record = json.loads((tmp_path / "audio" / "taught.json").read_text())
    assert record["steps"] == cfg.steps and record["windows"] > 200
    sets = [bench_encoders.train_windows(str(m), 80000, 320)
            for m in (corpus, _as_train(corpus, "test", tmp_path))]
    before = _beep_probe(tiny_encoders["audio"], *sets)
    after = _beep_probe(out, *sets)
    assert after >= 0.9 and after >= before + 0.05, (before, after)   # measured 0.86 → 0.96
    # Reused when already taught (not taught again); steps 0 keeps the random tower.
    mtime = (tmp_path / "audio" / "taught.json").stat().st_mtime
    assert bench_encoders.teach_audio(tiny_encoders["audio"], out, str(corpus), cfg) == out
    assert (tmp_path / "audio" / "taught.json").stat().st_mtime == mtime
    keep = bench_encoders.TeachConfig(steps=0)
    assert bench_encoders.teach_audio(tiny_encoders["audio"], str(tmp_path / "x"), str(corpus),
                                      keep) == tiny_encoders["audio"]


def test_bad_teach_config_names_the_field():
    from pipelines.bench_model import BenchConfig

    with pytest.raises(ConfigError) as err:
        from_dict(BenchConfig, {"teach_visual": {"steps": -1}})
    assert err.value.field == "teach_visual.steps"
    with pytest.raises(ConfigError) as err:
        from_dict(BenchConfig, {"teach_audio": {"lr": 0}})
    assert err.value.field == "teach_audio.lr"
    with pytest.raises(ConfigError) as err:
        from_dict(BenchConfig, {"llm_dim": 30})
    assert err.value.field == "llm_dim"
