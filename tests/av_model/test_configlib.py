"""The config system: typed loading, dotted overrides, errors that name the field."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from av_model.config import EncodersConfig
from av_model.configlib import ConfigError, apply_overrides, dump_yaml, from_dict, load_config


@dataclass(frozen=True)
class Inner:
    size: int = 3
    rate: float = 0.5
    names: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Outer:
    path: str
    inner: Inner = field(default_factory=Inner)
    maybe: int | None = None


def test_nested_load_and_coercion():
    cfg = from_dict(Outer, {"path": "x", "inner": {"size": 7, "rate": 1, "names": ["a"]}})
    assert cfg == Outer("x", Inner(7, 1.0, ["a"]))
    assert isinstance(cfg.inner.rate, float)


def test_unknown_key_names_the_dotted_field():
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, {"path": "x", "inner": {"sise": 7}})
    assert err.value.field == "inner.sise"
    assert "unknown key" in str(err.value)


def test_wrong_type_and_missing_required_field():
    with pytest.raises(ConfigError, match="inner.size"):
        from_dict(Outer, {"path": "x", "inner": {"size": "big"}})
    with pytest.raises(ConfigError, match="'path'"):
        from_dict(Outer, {})
    with pytest.raises(ConfigError, match="maybe"):
        from_dict(Outer, {"path": "x", "maybe": True})


def test_overrides_parse_yaml_values(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("path: a\ninner: {size: 1}\n")
    cfg = load_config(Outer, f, ["inner.size=9", "inner.names=[p, q]", "maybe=null"])
    assert cfg.inner.size == 9 and cfg.inner.names == ["p", "q"] and cfg.maybe is None
    assert apply_overrides({}, ["a.b.c=1.5"]) == {"a": {"b": {"c": 1.5}}}
    with pytest.raises(ConfigError):
        apply_overrides({}, ["novalue"])


def test_post_init_validation_is_prefixed_with_parent_field():
    with pytest.raises(ConfigError) as err:
        from_dict(EncodersConfig, {"visual": {"pooled_tokens": 5}})
    assert err.value.field == "visual.pooled_tokens"


def test_yaml_round_trip():
    cfg = EncodersConfig()
    import yaml

    assert from_dict(EncodersConfig, yaml.safe_load(dump_yaml(cfg))) == cfg


@dataclass(frozen=True)
class Tuned:
    inner: Inner = field(default_factory=lambda: Inner(size=9, names=["x", "y"]))
    table: dict[str, float] = field(default_factory=lambda: {"a": 1.0, "b": 2.0})


@dataclass(frozen=True)
class Wrapper:
    tuned: Tuned = field(default_factory=lambda: Tuned(table={"c": 3.0}))


def test_a_partial_section_keeps_the_fields_own_default():
    # Not Inner's class defaults: the field's default instance (size 9) is the base.
    assert from_dict(Tuned, {"inner": {"rate": 2.0}}).inner == Inner(9, 2.0, ["x", "y"])
    # Lists and plain mappings are values: given ones replace the default whole.
    cfg = from_dict(Tuned, {"inner": {"names": ["z"]}, "table": {"b": 5.0}})
    assert cfg.inner.names == ["z"] and cfg.table == {"b": 5.0}
    # Two levels deep, through the outer field's default.
    assert from_dict(Wrapper, {"tuned": {"inner": {"rate": 1.0}}}).tuned == Tuned(
        Inner(9, 1.0, ["x", "y"]), {"c": 3.0})


def test_config_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(ConfigError("optim.lr", "must be > 0")))
    assert err.field == "optim.lr" and str(err) == "config field 'optim.lr': must be > 0"
