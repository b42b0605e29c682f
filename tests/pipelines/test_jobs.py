"""What every job shares: relative output paths are refused under `ray job submit`."""

import os
import time

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


def test_wait_for_interrupt_returns_on_sigint_even_under_a_swallowing_handler():
    """A library's leftover SIGINT handler that never raises (Ray Train's) must not keep a
    served endpoint up past Ctrl-C; the signal comes from another thread, as under Ray."""
    import signal
    import threading

    swallowed = []
    mine = lambda signum, frame: swallowed.append(signum)  # noqa: E731
    previous = signal.signal(signal.SIGINT, mine)
    try:
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        start = time.monotonic()
        jobs.wait_for_interrupt()
        assert time.monotonic() - start < 5 and swallowed == []
        assert signal.getsignal(signal.SIGINT) is mine      # put back after the wait
    finally:
        signal.signal(signal.SIGINT, previous)
