"""What every job's ``main(argv)`` shares: argument parsing, config loading, a Ray session.

Config errors surface here, before Ray starts, with the dotted field name — a typo in a
100-node job should cost a second, not a cluster start-up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

from av_model.configlib import ConfigError, load_config

T = TypeVar("T")
R = TypeVar("R")

# Torch/BLAS threads per Ray worker process: two busy processes per core at most (we
# measured a 100× slowdown on 2 cores when every worker used all of them).
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass(frozen=True)
class RayConfig:
    """How the job reaches Ray."""

    # None: join the cluster a `ray job submit` runs us in (RAY_ADDRESS), else start a
    # private local one -- never a cluster some earlier `ray start` left on this machine
    # (plain ray.init() would join that one). "auto" joins that machine's running cluster;
    # "host:6379" or "ray://host:10001" a specific one.
    address: str | None = None
    num_cpus: int | None = None          # local Ray only: CPUs to offer (default: all)
    include_dashboard: bool = False      # local Ray only
    progress_bars: bool = True           # Ray Data progress bars on stderr


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (for local servers in demos and tests)."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def job_arguments(argv: list[str] | None, doc: str | None) -> argparse.Namespace:
    """``--config file.yaml key=value ...`` (the command line every job shares)."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=doc)
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. decode.batch_size=4")
    return parser.parse_args(argv)


def parse_job_config(cls: type[T], argv: list[str] | None, doc: str | None) -> T:
    """``--config file.yaml key=value ...`` → a validated config, or exit 2 naming the field."""
    args = job_arguments(argv, doc)
    setup_logging()
    try:
        return load_config(cls, args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def checked(fn: Callable[[T], R], cfg: T) -> R:
    """Run a pre-flight check; a ConfigError exits 2 with its message, before Ray starts."""
    try:
        return fn(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def starts_private_ray(cfg: RayConfig) -> bool:
    """Whether ``ray_session(cfg)`` would start a Ray of its own (nothing else uses it)."""
    import ray

    return not (ray.is_initialized() or cfg.address or os.environ.get("RAY_ADDRESS")
                or _JOB_CONFIG_ENV in os.environ)


@contextlib.contextmanager
def ray_session(cfg: RayConfig, env: dict[str, str] | None = None) -> Iterator[None]:
    """Use Ray as ``cfg.address`` / RAY_ADDRESS / ``ray job submit`` say, else start a
    private local Ray (shut down on leaving); an already initialised Ray is used as it is.

    ``env`` goes into the job's runtime env beside the thread caps: the workers and actors
    this job starts see it (Serve's controller and replicas included, when this job starts
    Serve)."""
    import ray
    from ray.data import DataContext

    started = False
    wanted = {**WORKER_ENV, **(env or {})}
    if not ray.is_initialized():
        runtime_env = {"env_vars": {**wanted, **_pythonpath()}}
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        if _JOB_CONFIG_ENV in os.environ:
            # Under `ray job submit` the job's own runtime_env (cluster/runtime_env.yaml) is in
            # force and Ray refuses a driver env_var that the job also sets: add only the
            # variables the job left out (all of them when --runtime-env was not given).
            job_env = _job_env_vars()
            missing = {k: v for k, v in wanted.items() if k not in job_env}
            ray.init(address=address or "auto",
                     runtime_env={"env_vars": missing} if missing else None)
        elif address:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        else:
            ray.init(address="local", num_cpus=cfg.num_cpus,
                     include_dashboard=cfg.include_dashboard, runtime_env=runtime_env)
        started = True
    DataContext.get_current().enable_progress_bars = cfg.progress_bars
    try:
        yield
    finally:
        if started:
            ray.shutdown()


_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def _job_env_vars() -> dict[str, str]:
    """The env_vars of the runtime env a `ray job submit` gave this driver."""
    from ray.job_config import JobConfig

    job = JobConfig.from_json(json.loads(os.environ[_JOB_CONFIG_ENV]))
    return dict((job.runtime_env or {}).get("env_vars") or {})


@contextlib.contextmanager
def sigint_restored() -> Iterator[None]:
    """Put the SIGINT handler back as it was on leaving.

    Ray Train 2.x's ``TorchTrainer.fit`` installs a handler that aborts its controller on
    Ctrl-C and leaves it installed after the run: a driver that goes on (the quickstart's
    ``--keep-serving``) then logs "Received SIGINT. Gracefully aborting the training run" and
    never sees KeyboardInterrupt.
    """
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGINT, previous)


def wait_for_interrupt() -> None:
    """Block until Ctrl-C (SIGINT), then return.

    Two traps, both seen as a served endpoint that ignored Ctrl-C: (1) the kernel may deliver
    SIGINT to any of Ray's threads, and the main thread runs the Python handler only at its
    next wake-up, so one long sleep could outlast the signal by an hour: short sleeps; (2) a
    library that ran before may have left a handler of its own that never raises
    KeyboardInterrupt (Ray Train's, see ``sigint_restored``): Python's default is put in
    place for the wait and the previous one back after it.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        return
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def check_durable_path(field: str, path: str) -> None:
    """Under ``ray job submit`` the driver runs in Ray's temporary copy of the uploaded
    working directory, deleted after the job: a relative output path would vanish with it
    (and other nodes could not see it). Refuse it before any work starts."""
    if _JOB_CONFIG_ENV not in os.environ or "://" in path or os.path.isabs(path):
        return
    raise ConfigError(field, f"{path!r} is relative; under `ray job submit` it would be written "
                      "into the job's temporary copy of the working directory. Give an "
                      "absolute path on shared storage or an s3:// prefix")


def _pythonpath() -> dict[str, str]:
    """Forward the driver's PYTHONPATH so workers import the same checkout."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": path} if path else {}
