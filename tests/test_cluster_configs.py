"""Every YAML under cluster/ and ray_cluster.yaml is validated for what it is, not just parsed.

Each document (multi-document files too) is matched by its shape to one rule of ``RULES``,
which checks it with the owning project's validator where one ships, and says what it checked:

- Ray cluster launcher config: Ray's JSON schema (ray/autoscaler/ray-schema.json) as written,
  then `ray up`'s own prepare_config + validate_config; setup_commands install avray with the
  Makefile's and pyproject's pins, the way `make install` does.
- Kubernetes manifest: apiVersion, kind and required fields per kind (``K8S_KINDS``; an
  unknown kind fails); pod templates; KubeRay specs (known keys, string rayStartParams,
  replica bounds, one image); RayJob entrypoints load through the job's own command-line
  parser and config loader; a RayService's serveConfigV2 builds the Serve app.
- Serve deploy file: Serve's schema; each application's args build the app (build_app).
- runtime_env file: Ray's RuntimeEnv checks; its excludes prune .venv and data.
- A flat mapping of environment variables (an env file): names, string values.

A document no rule matches fails: a new kind of file (a docker compose file, a conda env)
needs its rule in RULES first.

The checks live in tests/cluster_checks/: ``RULES`` and the discovery in rules.py,
``K8S_KINDS`` and the KubeRay checks in kubernetes.py, Ray's own files in ray_configs.py.
"""

from __future__ import annotations

import logging
import re
import shlex
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from av_model.configlib import to_dict
from pipelines.extract_features import ExtractConfig
from pipelines.train_config import TrainConfig
from tests.cluster_checks import CLUSTER
from tests.cluster_checks.ray_configs import head_working_dir, load_entrypoint
from tests.cluster_checks.rules import documents, validate
from tests.conftest import ROOT

log = logging.getLogger("avray.tests.cluster")


@pytest.mark.parametrize(("path", "doc"), documents())
def test_every_cluster_yaml_document_is_validated(path: Path, doc: Any, record_property):
    if isinstance(doc, Exception):
        pytest.fail(f"{path.relative_to(ROOT)}: {doc}")
    rule, checked = validate(path, doc)
    assert checked, f"the {rule} rule checked nothing"
    record_property("checked", f"{rule}: {'; '.join(checked)}")
    log.info("%s — %s: %s", path.relative_to(ROOT), rule, "; ".join(checked))


def kuberay(kind: str) -> list[dict]:
    return [d for p in sorted((CLUSTER / "kuberay").glob("*.yaml"))
            for d in yaml.safe_load_all(p.read_text()) if isinstance(d, dict)
            and d.get("kind") == kind]


def test_kuberay_runs_every_pipeline():
    """A RayJob per batch pipeline, a RayService for serving, a RayCluster to share."""
    modules = {shlex.split(j["spec"]["entrypoint"])[2] for j in kuberay("RayJob")}
    assert modules >= {"pipelines.extract_features", "pipelines.train", "pipelines.evaluate"}
    assert kuberay("RayService") and kuberay("RayCluster")


def test_train_rayjob_reads_what_the_extract_rayjob_writes():
    """The shards the extract job writes have the encoders the train job's model is built
    for (precision and batching aside), so the pair runs one after the other."""
    def identity(enc) -> dict:
        d = to_dict(enc)
        for part in ("visual", "audio", "audio_events"):
            d[part] = {k: v for k, v in d[part].items() if k != "dtype"
                       and not k.endswith("_per_forward")}
        return d

    cfgs = [load_entrypoint(j["spec"]["entrypoint"], head_working_dir(j["spec"].get(
        "rayClusterSpec"))) for j in kuberay("RayJob")]
    writes = {c.output: c.encoders for c in cfgs if isinstance(c, ExtractConfig)}
    trains = [c for c in cfgs if isinstance(c, TrainConfig)]
    assert trains and all(t.data.features in writes for t in trains), \
        f"train jobs read {[t.data.features for t in trains]}; extract jobs write {list(writes)}"
    for t in trains:
        assert identity(writes[t.data.features]) == identity(t.model.encoders)


# Each rule must fail on a broken file, naming the problem: (file, breakage, expected error).
def _edit(dotted: str, value: Any) -> Callable[[Any], None]:
    def apply(doc: Any) -> None:
        *parents, last = [int(k) if k.isdigit() else k for k in dotted.split(".")]
        for key in parents:
            doc = doc[key]
        if value is None:
            del doc[last]
        else:
            doc[last] = value(doc[last]) if callable(value) else value
    return apply


BREAKAGES = [
    ("ray_cluster.yaml", _edit("available_node_types.cpu_decode.resources.CPU", 0.5),
     "is not of type 'integer'"),
    ("ray_cluster.yaml", _edit("head_node_type", "gpu"), "head_node_type"),
    ("ray_cluster.yaml", _edit("setup_commands.2", lambda c: c.replace(
        "--no-build-isolation ", "")), "no-build-isolation"),
    ("ray_cluster.yaml", _edit("rsync_exclude", ["/.venv"]), "rsync_exclude"),
    ("cluster/kuberay/rayjob-train.yaml",
     _edit("spec.entrypoint", lambda e: f"{e} data.featurez=x"), "data.featurez"),
    ("cluster/kuberay/rayjob-extract.yaml", _edit("spec.entrypoint", lambda e: e.replace(
        "configs/extract/", "configs/train/")), "not a shipped preset"),
    ("cluster/kuberay/rayjob-evaluate.yaml", _edit("spec.clusterSelector", {"ray.io/cluster": "x"}),
     "exactly one"),
    ("cluster/kuberay/rayservice.yaml", _edit("spec.serveConfigV2", lambda s: s.replace(
        "allowed_root", "allowed_rot")), "allowed_rot"),
    ("cluster/kuberay/rayservice.yaml", _edit("spec", lambda s: {
        **s, "rayClusterSpec": s["rayClusterConfig"]}), "rayClusterSpec"),
    ("cluster/kuberay/raycluster.yaml", _edit("spec.headGroupSpec.rayStartParams.num-cpus", 0),
     "strings"),
    ("cluster/kuberay/raycluster.yaml", _edit(
        "spec.workerGroupSpecs.1.template.spec.containers.0.resources.limits", {"cpu": "10"}),
     "nvidia.com/gpu"),
    ("cluster/kuberay/raycluster.yaml", _edit("kind", "RayClusterTemplate"), "no rule for kind"),
    ("cluster/serve_config.yaml", _edit("applications.0.args.checkpoint", None), "checkpoint"),
]


@pytest.mark.parametrize(("name", "breakage", "error"), BREAKAGES,
                         ids=[f"{b[0].split('/')[-1]}:{b[2]}" for b in BREAKAGES])
def test_a_broken_file_fails_naming_the_problem(name: str, breakage, error: str):
    path = ROOT / name
    doc = yaml.safe_load(path.read_text())
    validate(path, doc)  # fine as shipped
    breakage(doc)
    with pytest.raises(Exception, match=re.escape(error)):
        validate(path, doc)


@pytest.mark.parametrize(("name", "doc", "error"), [
    ("runtime_env.yaml", {"working_dir": ".", "excludes": ["/.venv", "data/"]},
     "data is not excluded"),
    ("runtime_env.yaml", {"env_vars": {"OMP_NUM_THREADS": 1}}, "Dict[str, str]"),
    ("mlflow.yaml", {"MLFLOW_PORT": 5000}, "strings"),
    ("mlflow.yaml", {"backend": "postgresql"}, "matches no rule"),
], ids=["excludes-miss-data", "env-int", "env-file-int", "unknown-shape"])
def test_a_broken_shape_fails_naming_the_problem(name: str, doc: dict, error: str):
    with pytest.raises(Exception, match=re.escape(error)):
        validate(CLUSTER / name, doc)
