"""One config system for every part of avray: stdlib dataclasses, YAML files, dotted overrides.

Why hand-rolled instead of Hydra/OmegaConf: the configs are frozen dataclasses that travel
inside checkpoints (``avray.yaml``) and across Ray workers, and we want a bad key or a
wrongly-typed value to fail *before* any work starts with the dotted name of the field.
This module is ~150 lines and has no dependency beyond PyYAML.

    cfg = load_config(ExtractConfig, "pipelines/configs/extract/tiny.yaml",
                      ["visual_pool.batch_size=8", "decode.fps=1"])
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config problem, always naming the dotted field at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(f"config field '{field}': {message}")
        self.field, self.message = field, message

    def __reduce__(self):  # two arguments: keep both across process boundaries (Ray)
        return (ConfigError, (self.field, self.message))


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Turn a YAML value into ``tp``; raise ConfigError naming ``path`` when it cannot."""
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ConfigError(path, "may not be null")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, _prefix=path)
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list, got {type(value).__name__}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {type(value).__name__}")
        _, val_tp = typing.get_args(tp) or (str, Any)
        return {str(k): _coerce(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(path, f"must be one of {list(allowed)}, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(path, f"expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(path, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(path, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(path, f"expected a string, got {value!r}")
    return value


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def from_dict(cls: type[T], data: dict[str, Any], _prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict; unknown keys are errors naming the field.

    A nested section given in part keeps the rest of the field's *own* default: with
    ``synth: SynthConfig = field(default_factory=lambda: SynthConfig(n=240))``, the YAML
    ``synth: {seed: 3}`` means n=240 and seed=3, not SynthConfig's class defaults.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{_prefix}.{key}" if _prefix else str(key)
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(path, f"unknown key (known: {known})")
        default = _default_of(fields[key]) if isinstance(value, dict) else None
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            value = _merge_section(to_dict(default), value, fields_of=type(default))
        kwargs[key] = _coerce(value, hints[key], path)
    for name, f in fields.items():
        missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if missing and name not in kwargs:
            raise ConfigError(f"{_prefix}.{name}" if _prefix else name, "is required")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        if _prefix and not err.field.startswith(_prefix):
            raise ConfigError(f"{_prefix}.{err.field}", str(err).split(": ", 1)[1]) from None
        raise


def _merge_section(base: dict[str, Any], given: dict[str, Any], fields_of: type) -> dict[str, Any]:
    """``given`` over ``base`` for a dataclass section; nested dataclass sections merge the
    same way, any other value (lists, plain dicts) is replaced whole."""
    out = dict(base)
    kinds = {f.name: _default_of(f) for f in dataclasses.fields(fields_of)}
    for key, value in given.items():
        inner = kinds.get(key)
        if isinstance(value, dict) and isinstance(out.get(key), dict) and \
                dataclasses.is_dataclass(inner) and not isinstance(inner, type):
            out[key] = _merge_section(out[key], value, type(inner))
        else:
            out[key] = value
    return out


def to_dict(cfg: Any) -> Any:
    """Dataclass → plain nested dict/list (YAML- and JSON-safe)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings (values parsed as YAML) to a nested dict, in place."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(item, "override must look like key.sub=value")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = data
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(dotted, f"'{key}' is not a mapping")
            node = child
        node[keys[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return data


def load_config(cls: type[T], path: str | Path | None = None,
                overrides: list[str] | None = None) -> T:
    """Load ``cls`` from an optional YAML file plus dotted overrides, validating everything."""
    data: dict[str, Any] = {}
    if path:
        text = Path(path).read_text()
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ConfigError(str(path), "top level of a config file must be a mapping")
    return from_dict(cls, apply_overrides(data, overrides))


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def check(condition: bool, field: str, message: str) -> None:
    """``__post_init__`` helper: raise ConfigError(field, message) unless condition holds."""
    if not condition:
        raise ConfigError(field, message)
