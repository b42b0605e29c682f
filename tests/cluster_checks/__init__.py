"""The checkers behind tests/test_cluster_configs.py: what each YAML under cluster/ (and
ray_cluster.yaml) must satisfy. Shared here: the paths, the error type and the field helpers;
ray_configs.py checks Ray's own files (launcher config, job entrypoints, Serve deploy files,
runtime_env), kubernetes.py the manifests, rules.py finds the documents and picks each one's
check.
"""

from __future__ import annotations

from importlib.metadata import requires
from typing import Any

from packaging.requirements import Requirement

from tests.conftest import ROOT

CLUSTER = ROOT / "cluster"
LAUNCHER = ROOT / "ray_cluster.yaml"
SERVE_DEPLOY = CLUSTER / "serve_config.yaml"


class Invalid(AssertionError):
    """A config problem, naming where it is."""


def need(ok: Any, where: str, message: str) -> None:
    if not ok:
        raise Invalid(f"{where}: {message}")


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


def pyproject_requirement(name: str) -> Requirement:
    """avray's own pin for a dependency (installed metadata: `make` reinstalls on change)."""
    reqs = [Requirement(r) for r in requires("avray") or []]
    return next(r for r in reqs if r.name == name and r.marker is None)
