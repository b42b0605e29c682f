"""Session fixtures shared by the job tests: one synthetic corpus through the real extract
job, and one tiny model trained on it (training, serving and evaluation tests all use it)."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT

EXTRACT = str(ROOT / "pipelines" / "configs" / "extract" / "tiny.yaml")


@pytest.fixture(scope="session")
def synth_features(tmp_path_factory, tiny_encoders, ray_local) -> dict[str, str]:
    """12 short synthetic clips (real mp4 files) → feature shards, through the extract job."""
    from pipelines import extract_features
    from pipelines.corpora import synthetic

    root = tmp_path_factory.mktemp("train_corpus")
    cfg = synthetic.SynthConfig(n=12, seed=5, min_duration_s=5.5, max_duration_s=6.0,
                                max_shapes=2, speech=False,
                                split_fractions={"train": 0.75, "val": 0.25})
    synthetic.generate(cfg, str(root / "synth"))
    out = str(root / "features")
    extract_features.main(["--config", EXTRACT, f"corpus.path={root}/synth/manifest.jsonl",
                           f"output={out}", f"encoders.visual.name_or_path={tiny_encoders['visual']}",
                           f"encoders.audio.name_or_path={tiny_encoders['audio']}"])
    return {"root": str(root), "synth": str(root / "synth"), "features": out,
            "manifest": str(root / "synth" / "manifest.jsonl")}


@pytest.fixture(scope="session")
def trained_tiny(synth_features, tiny_encoders, tmp_path_factory) -> dict:
    """The tiny model (full fine-tune) trained in-process on the first QA of each training
    clip until it answers them; saved as a checkpoint directory."""
    import torch

    from av_model import checkpoint as av_checkpoint
    from av_model.model import AVModel
    from pipelines.train_data import Collator, read_rows, row_epochs
    from pipelines.train_loop import LoopState, Trainer
    from tests.pipelines.train_helpers import train_config

    out = tmp_path_factory.mktemp("trained_tiny")
    rows = [r for r in read_rows(synth_features["features"], "train") if r["conversations"]]
    for r in rows:
        r["conversations"] = r["conversations"][:2]
    cfg = train_config(tiny_encoders, "full",
                       optim={"max_steps": 400, "lr": 2e-3, "warmup_steps": 5})
    torch.manual_seed(0)
    model = AVModel.build(cfg.model, load_encoders=False)
    Trainer(model, cfg, lambda m, p: None).fit(
        row_epochs(rows, Collator(model, cfg.data), cfg.data.batch_size), None, LoopState(),
        lambda s: str(out / f"step{s}"))
    ckpt = av_checkpoint.save(model, out / "model")
    return {"checkpoint": str(ckpt), "rows": rows}
