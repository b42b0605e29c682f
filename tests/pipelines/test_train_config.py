"""Training config: model bases and merging, and errors that name the field."""

import pytest
import yaml

from av_model.configlib import ConfigError
from pipelines.train_config import load_train_config


def _write(tmp_path, data) -> str:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_preset_base_with_partial_model_override(tmp_path):
    cfg = load_train_config(_write(tmp_path, {
        "stage": "instruct", "model_base": "favor-vicuna13b",
        "model": {"connector": {"diversity_weight": 0.01}}, "data": {"features": "f"}}),
        ["model.llm.lora_r=8"])
    assert cfg.model.connector.kind == "causal_qformer" and cfg.model.llm.lora_r == 8
    assert cfg.model.connector.diversity_weight == 0.01
    assert cfg.model.encoders.audio.name_or_path == "openai/whisper-large-v2"


def test_tiny_model_yaml_base(tiny_encoders, tmp_path):
    import os

    base = os.path.join(os.path.dirname(tiny_encoders["llm"]), "model.yaml")
    cfg = load_train_config(_write(tmp_path, {"model_base": base, "data": {"features": "f"}}),
                            ["model.llm.mode=frozen"])
    assert cfg.stage == "align" and cfg.model.llm.name_or_path == tiny_encoders["llm"]


@pytest.mark.parametrize("data, overrides, field", [
    ({"model_base": "favor-vicuna13b", "data": {"features": "f"}}, [], "stage"),  # lora+align
    ({"model_base": "favor-vicuna13b", "stage": "instruct"}, [], "data.features"),
    ({"model_base": "nope", "data": {"features": "f"}}, [], "model_base"),
    ({"data": {"features": "f"}}, [], "model_base"),
    ({"model_base": "favor-vicuna13b", "stage": "instruct", "data": {"features": "f"}},
     ["deepspeed.offload_params=true"], "deepspeed.offload_params"),
    ({"model_base": "favor-vicuna13b", "stage": "instruct", "data": {"features": "f"}},
     ["optim.warmup_steps=500"], "optim.warmup_steps"),
    ({"model_base": "favor-vicuna13b", "stage": "instruct", "data": {"features": "f"}},
     ["data.colour=1"], "data.colour"),
])
def test_bad_config_names_the_field(tmp_path, data, overrides, field):
    with pytest.raises(ConfigError) as err:
        load_train_config(_write(tmp_path, data), overrides)
    assert err.value.field == field
