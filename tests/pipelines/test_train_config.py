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
     ["optim.connector_lr=0"], "optim.connector_lr"),
    ({"model_base": "favor-vicuna13b", "stage": "instruct", "data": {"features": "f"}},
     ["data.caption_mix=0.5", "data.use_captions=false"], "data.caption_mix"),
    ({"model_base": "favor-vicuna13b", "stage": "instruct", "data": {"features": "f"}},
     ["data.colour=1"], "data.colour"),
    ({"model_base": "favor-vicuna13b", "stage": "instruct", "data": {"features": "f"}},
     ["deepspeed.precision=fp16"], "deepspeed.precision"),              # CPU: no fp16
    ({"model_base": "favor-vicuna13b", "stage": "instruct", "data": {"features": "f"}},
     ["deepspeed.precision=fp16", "deepspeed.enabled=false", "scaling.use_gpu=true"],
     "deepspeed.precision"),                                           # no loss scaling
    ({"model_base": "favor-vicuna13b", "stage": "instruct", "data": {"features": "f"}},
     ["deepspeed.enabled=false", "deepspeed.offload_optimizer=true"],
     "deepspeed.offload_optimizer"),
])
def test_bad_config_names_the_field(tmp_path, data, overrides, field):
    with pytest.raises(ConfigError) as err:
        load_train_config(_write(tmp_path, data), overrides)
    assert err.value.field == field


def test_instruct_stage_starts_from_the_align_checkpoint(tiny_encoders, tmp_path):
    """init_from: the previous stage's avray.yaml is the base, its connector the start."""
    import dataclasses

    import torch

    from av_model import checkpoint
    from av_model.model import AVModel
    from av_model.tiny import tiny_model_config
    from pipelines.train import build_model

    base = tiny_model_config(tiny_encoders)
    align = dataclasses.replace(base, llm=dataclasses.replace(base.llm, mode="frozen"))
    torch.manual_seed(0)
    stage1 = AVModel.build(align, load_encoders=False)
    with torch.no_grad():
        stage1.connector.out_proj.weight.add_(1.0)          # "trained"
    checkpoint.save(stage1, tmp_path / "align")
    cfg = load_train_config(_write(tmp_path, {
        "stage": "instruct", "init_from": str(tmp_path / "align"),
        "model": {"llm": {"mode": "lora"}}, "data": {"features": "f"}}))
    assert cfg.model.connector == align.connector and cfg.model.llm.mode == "lora"
    torch.manual_seed(1)
    stage2 = build_model(cfg)
    assert torch.equal(stage2.connector.out_proj.weight, stage1.connector.out_proj.weight)
    assert any("lora_" in n for n, p in stage2.llm.named_parameters() if p.requires_grad)
