"""Kubernetes manifests: apiVersion, kind and required fields per kind, pod templates, and
KubeRay's RayCluster / RayJob / RayService specs."""

from __future__ import annotations

import base64
import binascii
import copy
import re
from pathlib import Path
from typing import Callable

import yaml
from packaging.version import Version

from tests.cluster_checks import (SERVE_DEPLOY, Invalid, known_keys, need,
                                  pyproject_requirement, require)
from tests.cluster_checks.ray_configs import (check_serve_deploy, head_working_dir,
                                              load_entrypoint, runtime_env_types)


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
