"""Every YAML shipped under pipelines/configs loads into its job's config dataclass."""

import os
from pathlib import Path

import pytest

from av_model.configlib import load_config
from pipelines.extract_features import ExtractConfig
from pipelines.train_config import TrainConfig, load_train_config

CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"
JOBS = {"extract": ExtractConfig, "train": TrainConfig}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*/*.yaml")), ids=lambda p: p.name)
def test_shipped_yaml_loads(path: Path, tiny_encoders):
    cls = JOBS[path.parent.name]
    if cls is TrainConfig:
        # tiny-* name the model.yaml `avray tiny` writes; point them at the session's.
        tiny = os.path.join(os.path.dirname(tiny_encoders["llm"]), "model.yaml")
        overrides = [f"model_base={tiny}"] if path.name.startswith("tiny") else []
        cfg = load_train_config(str(path), overrides)
    else:
        cfg = load_config(cls, path)
    assert isinstance(cfg, cls)


def test_every_job_directory_is_covered():
    assert {p.name for p in CONFIGS.iterdir() if p.is_dir()} <= set(JOBS)
