"""What every job shares: relative output paths are refused under `ray job submit`."""

import pytest

from av_model.configlib import ConfigError
from pipelines import jobs


def test_relative_outputs_are_refused_only_under_job_submit(monkeypatch, tmp_path):
    monkeypatch.delenv(jobs._JOB_CONFIG_ENV, raising=False)
    jobs.check_durable_path("output", "data/features")            # a local run: fine
    monkeypatch.setenv(jobs._JOB_CONFIG_ENV, '{"runtime_env": {}}')
    for ok in (str(tmp_path), "s3://bucket/features", "file:///mnt/shared/x"):
        jobs.check_durable_path("output", ok)
    with pytest.raises(ConfigError) as err:
        jobs.check_durable_path("run.storage_path", "runs")
    assert err.value.field == "run.storage_path" and "ray job submit" in str(err.value)


def test_extract_job_exits_2_on_a_relative_output_under_job_submit(monkeypatch, capsys):
    from pipelines import extract_features
    from tests.conftest import ROOT

    monkeypatch.setenv(jobs._JOB_CONFIG_ENV, '{"runtime_env": {}}')
    with pytest.raises(SystemExit) as exit_:
        extract_features.main(["--config", str(ROOT / "pipelines/configs/extract/tiny.yaml"),
                               f"corpus.path={ROOT / 'README.md'}", "output=data/x"])
    assert exit_.value.code == 2 and "'data/x' is relative" in capsys.readouterr().err
