"""Ray's own files: the cluster launcher config, job entrypoints, Serve deploy files and
runtime_envs, each checked with Ray's (or the job's) own validator where one ships."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.version import Version

from av_model.configlib import load_config
from pipelines import jobs
from pipelines.train_config import TrainConfig, load_train_config
from tests.cluster_checks import Invalid, known_keys, need, pyproject_requirement
from tests.conftest import ROOT
from tests.test_shipped_configs import CONFIGS, JOBS


# ----------------------------------------------------------------- Ray cluster launcher


def check_launcher(path: Path, doc: dict) -> list[str]:
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(doc, schema)
    validate_config(prepare_config(copy.deepcopy(doc)))  # what `ray up` runs before launching
    return ["Ray's ray-schema.json", "ray up's prepare_config + validate_config",
            *check_launcher_install(doc)]


def _pip_installs(commands: list[str]) -> list[tuple[list[str], list[Requirement | str]]]:
    """(options, requirements or local paths) of every `pip install` in the commands."""
    out = []
    for cmd in commands:
        words = shlex.split(cmd)
        for i in [i for i, w in enumerate(words[:-1]) if w == "pip" and words[i + 1] == "install"]:
            args = words[i + 2:words.index("&&", i) if "&&" in words[i:] else None]
            opts = [a for a in args if a.startswith("-")]
            pkgs = [a if a.startswith((".", "/", "~")) else Requirement(a)
                    for a in args if not a.startswith("-")]
            out.append((opts, pkgs))
    return out


def check_launcher_install(doc: dict) -> list[str]:
    """setup_commands mirror `make install`: torch pinned first and in every install,
    deepspeed without build isolation, then the synced repo with Ray pinned to the image's."""
    where = "setup_commands"
    torch = re.search(r"^TORCH_SPEC\s*\?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)[1]
    installs = [(o, p) for o, p in _pip_installs(doc.get("setup_commands", []))
                if [str(x) for x in p] != ["pip"]]
    need(installs, where, "install nothing: they must install avray")
    for _, pkgs in installs:
        need(torch in [str(p) for p in pkgs], where, f"every install pins {torch} (the "
             f"Makefile's TORCH_SPEC), got {[str(p) for p in pkgs]}")
    need(len(installs[0][1]) == 1, where, "torch is installed first, on its own")
    ds = [(opts, req) for opts, pkgs in installs for req in pkgs
          if getattr(req, "name", "") == "deepspeed"]
    need(len(ds) == 1 and "--no-build-isolation" in ds[0][0], where,
         "deepspeed is installed once, with --no-build-isolation (its sdist imports torch)")
    need(ds[0][1].specifier == pyproject_requirement("deepspeed").specifier, where,
         f"deepspeed {ds[0][1].specifier} is not pyproject's "
         f"{pyproject_requirement('deepspeed').specifier}")
    repo = [r for r, local in doc.get("file_mounts", {}).items() if local in (".", "./")]
    need(repo and f"cd {repo[0]}" in doc["setup_commands"][-1] and "." in installs[-1][1],
         where, "the last command installs the repo that file_mounts syncs from '.'")
    ray = [p for p in installs[-1][1] if getattr(p, "name", "") == "ray"]
    need(ray and str(ray[0].specifier).startswith("=="), where, "ray is pinned (==) with avray")
    version = Version(str(ray[0].specifier)[2:])
    need(version in pyproject_requirement("ray").specifier, where,
         f"ray {version} is outside pyproject's {pyproject_requirement('ray').specifier}")
    images = re.findall(r"rayproject/ray:([\d.]+)", json.dumps(doc))
    need(all(Version(v) == version for v in images), where,
         f"the docker images' Ray {images} differ from the pinned ray {version}")
    excludes = doc.get("rsync_exclude", [])
    need({"/.venv", "/data"} <= set(excludes) or {".venv", "data"} <= set(excludes),
         "rsync_exclude", "must keep .venv and data off the nodes")
    return [f"setup_commands pin {torch} first, deepspeed{ds[0][1].specifier} without build "
            f"isolation, then the repo with ray=={version} (= the images' Ray)",
            "rsync_exclude skips .venv and data"]


# ------------------------------------------------------- job entrypoints and Serve apps

JOB_MODULES = {"pipelines.extract_features": "extract", "pipelines.train": "train",
               "pipelines.evaluate": "evaluate", "pipelines.serve": "serve"}
REMOTE = ("s3://", "models:/", "runs:/")


def head_working_dir(cluster: dict | None) -> str | None:
    """Where the image holds the repo: the head container's workingDir (the driver runs there)."""
    containers = (((cluster or {}).get("headGroupSpec") or {}).get("template") or {}).get(
        "spec", {}).get("containers") or [{}]
    return containers[0].get("workingDir")


def load_entrypoint(entrypoint: str, repo: str | None) -> Any:
    """``python -m pipelines.X --config PRESET key=value ...`` → the job's config, parsed by
    the parser every job's main() uses and loaded by its loader (a bad key raises
    ConfigError naming it). A remote init_from is not fetched: the train preset's model_base
    stands in for the checkpoint's model config."""
    argv = shlex.split(entrypoint)
    need(len(argv) > 3 and argv[0] in ("python", "python3") and argv[1] == "-m"
         and argv[2] in JOB_MODULES, "entrypoint",
         f"must be `python -m <{'|'.join(JOB_MODULES)}> --config ...`, got {entrypoint!r}")
    job = JOB_MODULES[argv[2]]
    args = jobs.job_arguments(argv[3:], None)
    need(args.config, "entrypoint", "--config must name a shipped preset")
    config = Path(args.config)
    if config.is_absolute():
        need(repo and config.is_relative_to(repo), "--config",
             f"{config} is not under the image's repo (head container workingDir {repo})")
        config = config.relative_to(repo)
    config = ROOT / config
    need(config.parent == CONFIGS / job and config.is_file(), "--config",
         f"{args.config} is not a shipped preset pipelines/configs/{job}/*.yaml")
    if JOBS[job] is TrainConfig:
        offline = [o for o in args.overrides if not o.startswith(tuple(
            f"init_from={r}" for r in REMOTE))]
        return load_train_config(str(config), offline)
    return load_config(JOBS[job], config, args.overrides)


def check_serve_deploy(path: Path, doc: dict) -> list[str]:
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    from pipelines.serve import build_app

    schema = ServeDeploySchema.model_validate(doc)
    for app in schema.applications:
        where = f"application {app.name}"
        need(app.import_path == "pipelines.serve:build_app", where,
             f"import_path {app.import_path}: only pipelines.serve:build_app is avray's")
        need(isinstance(build_app(app.args), Application), where, "build_app built no app")
        if app.runtime_env:
            runtime_env_types(app.runtime_env, where)
    return ["Serve's ServeDeploySchema",
            f"args of {[a.name for a in schema.applications]} build the app (build_app)"]


# --------------------------------------------------------- runtime envs and other shapes


def runtime_env_types(env: Any, where: str) -> str:
    from ray.runtime_env import RuntimeEnv

    need(isinstance(env, dict), where, "a runtime_env is a mapping")
    known_keys(env, RuntimeEnv.known_fields, f"{where} runtime_env")
    try:
        RuntimeEnv(**env)  # Ray's own checks: working_dir str, excludes List[str], env_vars ...
    except (TypeError, ValueError) as err:
        raise Invalid(f"{where}: {err}") from None
    return f"{where}: runtime_env {sorted(env)} (Ray's RuntimeEnv checks)"


def check_runtime_env(path: Path, doc: Any) -> list[str]:
    from ray._private.runtime_env.packaging import _get_excludes  # the matcher uploads use

    checked = runtime_env_types(doc, path.name)
    excluded = _get_excludes(ROOT, doc.get("excludes") or [])
    # The directories themselves, so that Ray prunes them instead of walking every file.
    for sample in (".venv", ".venv/bin/python", "data", "data/features/part-0.parquet"):
        need(excluded(ROOT / sample), "excludes",
             f"{sample} is not excluded: `--working-dir .` would walk or upload it")
    return [checked, "excludes prune .venv and data from the upload"]
