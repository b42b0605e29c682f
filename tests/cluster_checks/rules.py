"""Finding the YAML documents and matching each, by its shape, to the rule that checks it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from tests.cluster_checks import CLUSTER, LAUNCHER, Invalid, need
from tests.cluster_checks.kubernetes import check_manifest
from tests.cluster_checks.ray_configs import (check_launcher, check_runtime_env,
                                              check_serve_deploy)
from tests.conftest import ROOT


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
