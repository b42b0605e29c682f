"""Every YAML shipped under pipelines/configs loads into its job's config dataclass."""

from pathlib import Path

import pytest

from av_model.configlib import load_config
from pipelines.extract_features import ExtractConfig

CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"
JOBS = {"extract": ExtractConfig}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*/*.yaml")), ids=lambda p: p.name)
def test_shipped_yaml_loads(path: Path):
    cls = JOBS[path.parent.name]
    cfg = load_config(cls, path)
    assert isinstance(cfg, cls)


def test_every_job_directory_is_covered():
    assert {p.name for p in CONFIGS.iterdir() if p.is_dir()} <= set(JOBS)
