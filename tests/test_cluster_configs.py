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
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import logging
import re
import shlex
from importlib.metadata import requires
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from av_model.configlib import load_config, to_dict
from pipelines import jobs
from pipelines.extract_features import ExtractConfig
from pipelines.train_config import TrainConfig, load_train_config
from tests.conftest import ROOT
from tests.test_shipped_configs import CONFIGS, JOBS

log = logging.getLogger("avray.tests.cluster")
CLUSTER = ROOT / "cluster"
LAUNCHER = ROOT / "ray_cluster.yaml"
SERVE_DEPLOY = CLUSTER / "serve_config.yaml"


class Invalid(AssertionError):
    """A config problem, naming where it is."""


def need(ok: Any, where: str, message: str) -> None:
    if not ok:
        raise Invalid(f"{where}: {message}")


def yaml_files() -> list[Path]:
    return sorted({LAUNCHER, *CLUSTER.rglob("*.yaml"), *CLUSTER.rglob("*.yml")})


def documents() -> list:
    """One param per YAML document; a file that does not parse (or holds nothing) becomes
    one param carrying the error, so that it fails its own test, not the collection."""
    params = []
    for path in yaml_files():
        name = path.relative_to(ROOT).as_posix()
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except (OSError, yaml.YAMLError) as err:
            docs = [err]
        params += [pytest.param(path, d, id=f"{name}#{i}") for i, d in enumerate(docs or [
            Invalid(f"{name}: no YAML document in it")])]
    return params


def pyproject_requirement(name: str) -> Requirement:
    """avray's own pin for a dependency (installed metadata: `make` reinstalls on change)."""
    reqs = [Requirement(r) for r in requires("avray") or []]
    return next(r for r in reqs if r.name == name and r.marker is None)


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


# ------------------------------------------------------------------ Kubernetes manifests

# kind: (apiVersion, required fields: dotted paths, "[]" = every item of a list)
K8S_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "RayCluster": ("ray.io/v1", ("spec.headGroupSpec",)),
    "RayJob": ("ray.io/v1", ("spec.entrypoint",)),
    "RayService": ("ray.io/v1", ("spec.serveConfigV2", "spec.rayClusterConfig")),
    "Deployment": ("apps/v1", ("spec.selector.matchLabels", "spec.template.metadata.labels",
                               "spec.template.spec.containers")),
    "StatefulSet": ("apps/v1", ("spec.selector.matchLabels", "spec.template.metadata.labels",
                                "spec.template.spec.containers")),
    "Job": ("batch/v1", ("spec.template.spec.containers", "spec.template.spec.restartPolicy")),
    "CronJob": ("batch/v1", ("spec.schedule", "spec.jobTemplate.spec.template.spec.containers",
                             "spec.jobTemplate.spec.template.spec.restartPolicy")),
    "Service": ("v1", ("spec.ports[].port",)),
    "ConfigMap": ("v1", ()),
    "Secret": ("v1", ()),
    "PersistentVolumeClaim": ("v1", ("spec.accessModes", "spec.resources.requests.storage")),
    "ServiceAccount": ("v1", ()),
    "Namespace": ("v1", ()),
    "Ingress": ("networking.k8s.io/v1", ("spec",)),
}
# KubeRay's CRD fields (ray-operator/apis/ray/v1/*_types.go): a typo such as RayJob's
# `rayClusterSpec` in a RayService (whose field is rayClusterConfig) is dropped silently by
# the API server, so unknown keys fail here.
RAY_CLUSTER_KEYS = {"suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations",
                    "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec",
                    "rayVersion", "workerGroupSpecs"}
HEAD_GROUP_KEYS = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP_KEYS = {"suspend", "groupName", "replicas", "minReplicas", "maxReplicas",
                     "idleTimeoutSeconds", "rayStartParams", "template", "scaleStrategy",
                     "numOfHosts"}
RAY_JOB_KEYS = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate",
                "metadata", "clusterSelector", "submitterConfig", "managedBy", "deletionPolicy",
                "deletionStrategy", "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode",
                "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
                "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend"}
RAY_SERVICE_KEYS = {"serveConfigV2", "rayClusterConfig", "serveService", "upgradeStrategy",
                    "excludeHeadPodFromServeSvc", "rayClusterDeletionDelaySeconds",
                    "serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def require(doc: Any, dotted: str, where: str) -> None:
    nodes = [doc]
    for part in dotted.split("."):
        key, many = part.removesuffix("[]"), part.endswith("[]")
        for node in nodes:
            need(isinstance(node, dict) and node.get(key) is not None, where,
                 f"required field {dotted} is missing ({key})")
        nodes = [n[key] for n in nodes]
        if many:
            need(all(isinstance(n, list) and n for n in nodes), where, f"{key} must be a list")
            nodes = [item for n in nodes for item in n]


def known_keys(node: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(node) - known)
    need(not unknown, where, f"unknown field(s) {unknown}; known: {sorted(known)}")


def check_manifest(path: Path, doc: dict) -> list[str]:
    kind, api = doc["kind"], doc["apiVersion"]
    need(kind in K8S_KINDS, kind, f"no rule for kind {kind} ({api}): add its apiVersion and "
                                  "required fields to K8S_KINDS")
    want, required = K8S_KINDS[kind]
    name = (doc.get("metadata") or {}).get("name", "")
    where = f"{kind}/{name}"
    need(api == want, where, f"apiVersion {api}, expected {want}")
    need(isinstance(name, str) and DNS_NAME.fullmatch(name) and len(name) <= 63, where,
         "metadata.name must be a DNS-1123 name of at most 63 characters")
    for dotted in required:
        require(doc, dotted, where)
    checked = [f"{kind} {want}: required {', '.join(required) or 'metadata.name'}"]
    claims = {t["metadata"]["name"] for t in (doc.get("spec") or {}).get(
        "volumeClaimTemplates") or []}  # a StatefulSet's per-pod volumes
    for pod_where, pod in pod_specs(kind, doc, where):
        checked.append(check_pod(pod, pod_where, claims))
    extra = KIND_CHECKS.get(kind)
    return checked + (extra(doc, where) if extra else [])


def pod_specs(kind: str, doc: dict, where: str) -> list[tuple[str, dict]]:
    spec = doc.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "Job"):
        return [(where, spec["template"]["spec"])]
    if kind == "CronJob":
        return [(where, spec["jobTemplate"]["spec"]["template"]["spec"])]
    cluster = {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"),
               "RayService": spec.get("rayClusterConfig")}.get(kind)
    groups = [("head", cluster.get("headGroupSpec") or {})] + [
        (g.get("groupName", "?"), g) for g in cluster.get("workerGroupSpecs") or []
    ] if cluster else []  # a RayJob with a clusterSelector has no pods of its own
    pods = [(f"{where} {n}", (g.get("template") or {}).get("spec") or {}) for n, g in groups]
    if spec.get("submitterPodTemplate"):
        pods.append((f"{where} submitter", spec["submitterPodTemplate"].get("spec") or {}))
    return pods


def check_pod(pod: dict, where: str, claims: set[str]) -> str:
    containers = pod.get("containers") or []
    need(containers, where, "the pod template has no containers")
    volumes = {v.get("name") for v in pod.get("volumes") or []} | claims
    names = [c.get("name") for c in containers + (pod.get("initContainers") or [])]
    need(all(names) and len(set(names)) == len(names), where, "container names: set, unique")
    for c in containers:
        at = f"{where} container {c.get('name')}"
        need(c.get("image"), at, "no image")
        for env in c.get("env") or []:
            need(env.get("name") and (isinstance(env.get("value"), str) or "valueFrom" in env),
                 at, f"env {env.get('name')}: value must be a string (quote it) or valueFrom")
        res = c.get("resources") or {}
        gpus = [(res.get(k) or {}).get("nvidia.com/gpu") for k in ("requests", "limits")]
        need(gpus[0] is None or gpus[0] == gpus[1], at,
             "nvidia.com/gpu goes in limits (and requests, if any, must equal it)")
        for mount in c.get("volumeMounts") or []:
            need(mount.get("name") in volumes and mount.get("mountPath"), at,
                 f"volumeMount {mount.get('name')} names no volume of the pod")
    return f"{where}: containers, images, string env values, GPU limits, volume mounts"


def check_ray_cluster_spec(spec: dict, where: str) -> list[str]:
    known_keys(spec, RAY_CLUSTER_KEYS, where)
    head = spec.get("headGroupSpec") or {}
    known_keys(head, HEAD_GROUP_KEYS, f"{where} headGroupSpec")
    for dotted in ("rayStartParams", "template.spec.containers"):
        require(head, dotted, f"{where} headGroupSpec")
    groups = spec.get("workerGroupSpecs") or []
    for g in groups:
        at = f"{where} workerGroupSpecs[{g.get('groupName')}]"
        known_keys(g, WORKER_GROUP_KEYS, at)
        for dotted in ("groupName", "rayStartParams", "template.spec.containers",
                       "minReplicas", "maxReplicas"):
            require(g, dotted, at)
        lo, hi = g["minReplicas"], g["maxReplicas"]
        need(0 <= lo <= g.get("replicas", lo) <= hi, at, "need minReplicas <= replicas <= max")
    names = [g["groupName"] for g in groups]
    need(len(set(names)) == len(names), where, f"groupNames repeat: {names}")
    images = set()
    for g in [head, *groups]:
        params = g["rayStartParams"]
        need(all(isinstance(v, str) for v in params.values()), where,
             f"rayStartParams values must be strings (map[string]string): {params}")
        images.add(g["template"]["spec"]["containers"][0].get("image"))
    need(len(images) == 1, where, f"head and workers must run one image (one Ray): {images}")
    if "rayVersion" in spec:
        need(Version(str(spec["rayVersion"])) in pyproject_requirement("ray").specifier, where,
             f"rayVersion {spec['rayVersion']} is outside pyproject's ray range")
    return [f"{where}: KubeRay fields, string rayStartParams, replica bounds, one image"]


def check_ray_cluster(doc: dict, where: str) -> list[str]:
    return check_ray_cluster_spec(doc["spec"], where)


def check_ray_job(doc: dict, where: str) -> list[str]:
    spec = doc["spec"]
    known_keys(spec, RAY_JOB_KEYS, where)
    need(("rayClusterSpec" in spec) != ("clusterSelector" in spec), where,
         "set exactly one of rayClusterSpec (a cluster per job) and clusterSelector")
    need(spec.get("submissionMode", "K8sJobMode") in SUBMISSION_MODES, where,
         f"submissionMode must be one of {sorted(SUBMISSION_MODES)}")
    need(not ("clusterSelector" in spec and spec.get("shutdownAfterJobFinishes")), where,
         "shutdownAfterJobFinishes would delete a cluster this job does not own")
    need(not spec.get("ttlSecondsAfterFinished") or spec.get("shutdownAfterJobFinishes"), where,
         "ttlSecondsAfterFinished only acts with shutdownAfterJobFinishes: true")
    checked = []
    if "rayClusterSpec" in spec:
        checked += check_ray_cluster_spec(spec["rayClusterSpec"], f"{where} rayClusterSpec")
    if "runtimeEnvYAML" in spec:
        need(isinstance(spec["runtimeEnvYAML"], str), where, "runtimeEnvYAML is a YAML string")
        checked.append(runtime_env_types(yaml.safe_load(spec["runtimeEnvYAML"]), where))
    cfg = load_entrypoint(spec["entrypoint"], head_working_dir(spec.get("rayClusterSpec")))
    return checked + [f"{where}: entrypoint loads as a {type(cfg).__name__}"]


def check_ray_service(doc: dict, where: str) -> list[str]:
    spec = doc["spec"]
    known_keys(spec, RAY_SERVICE_KEYS, where)
    need(isinstance(spec["serveConfigV2"], str), where, "serveConfigV2 is a YAML string (|)")
    serve = yaml.safe_load(spec["serveConfigV2"])
    checked = check_serve_deploy(SERVE_DEPLOY, serve)
    if SERVE_DEPLOY.is_file():  # one app for VMs and Kubernetes; the MLflow address differs
        apps = [without_tracking(serve), without_tracking(yaml.safe_load(SERVE_DEPLOY.read_text()))]
        need(apps[0] == apps[1], where, "serveConfigV2's applications differ from "
             "cluster/serve_config.yaml's (args.tracking_uri aside)")
        checked.append("serveConfigV2 applications == cluster/serve_config.yaml's")
    return checked + check_ray_cluster_spec(spec["rayClusterConfig"], f"{where} rayClusterConfig")


def without_tracking(serve: dict) -> list[dict]:
    apps = copy.deepcopy(serve.get("applications") or [])
    for app in apps:
        (app.get("args") or {}).pop("tracking_uri", None)
    return apps


def check_selector(doc: dict, where: str) -> list[str]:
    spec = doc["spec"]
    labels, match = spec["template"]["metadata"]["labels"], spec["selector"]["matchLabels"]
    need(match.items() <= labels.items(), where, "selector.matchLabels must match the pods")
    return ["selector matches the pod template's labels"]


def check_config_data(doc: dict, where: str) -> list[str]:
    for key in ("data", "stringData"):
        need(all(isinstance(v, str) for v in (doc.get(key) or {}).values()), where,
             f"{key} values must be strings")
    for key, value in ((doc.get("data") or {}).items() if doc["kind"] == "Secret" else []):
        try:
            base64.b64decode(value, validate=True)
        except binascii.Error:
            raise Invalid(f"{where}: data.{key} is not base64 (use stringData)") from None
    return ["data / stringData values"]


KIND_CHECKS: dict[str, Callable[[dict, str], list[str]]] = {
    "RayCluster": check_ray_cluster, "RayJob": check_ray_job, "RayService": check_ray_service,
    "Deployment": check_selector, "StatefulSet": check_selector,
    "ConfigMap": check_config_data, "Secret": check_config_data,
}


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


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_env_vars(path: Path, doc: dict) -> list[str]:
    for key, value in doc.items():
        need(isinstance(value, str), key, f"{value!r}: environment values are strings (quote it)")
    return [f"environment variables {sorted(doc)}: string values"]


def _keys(doc: Any) -> set:
    return set(doc) if isinstance(doc, dict) else {None}


def _shape(has: set[str]) -> Callable[[Path, Any], bool]:
    """A document (a mapping) with all the keys of ``has``."""
    return lambda path, doc: has <= _keys(doc)


def _env_mapping(path: Path, doc: Any) -> bool:
    return isinstance(doc, dict) and bool(doc) and all(
        isinstance(k, str) and ENV_NAME.fullmatch(k) and k.isupper() for k in doc)


# (what the document is, how to recognise it, its check), first match wins.
RULES: list[tuple[str, Callable[[Path, Any], bool], Callable[[Path, Any], list[str]]]] = [
    ("Ray cluster launcher config", _shape({"cluster_name", "provider"}), check_launcher),
    ("Kubernetes manifest", _shape({"apiVersion", "kind"}), check_manifest),
    ("Serve deploy config", _shape({"applications"}), check_serve_deploy),
    ("runtime_env", lambda path, doc: path.stem.startswith("runtime_env"), check_runtime_env),
    ("environment variables", _env_mapping, check_env_vars),
]


def validate(path: Path, doc: Any) -> tuple[str, list[str]]:
    """The rule this document matches and what it checked; raises on a problem."""
    for name, matches, check in RULES:
        if matches(path, doc):
            return name, check(path, doc)
    raise Invalid(f"{path.name}: matches no rule ({', '.join(r[0] for r in RULES)}); "
                  f"top-level keys {sorted(map(str, _keys(doc)))}: add a rule to RULES")


# ------------------------------------------------------------------------------ tests


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
