"""Model presets: valid, buildable at real size, and the LLM tokens per second they feed."""

import dataclasses

import pytest
import torch

from av_model.config import MODEL_PRESETS, ConnectorConfig, ModelConfig
from av_model.configlib import ConfigError, dump_yaml, from_dict
from av_model.connectors.factory import build_connector
from av_model.sync import frames_per_slot

import yaml

# LLM tokens per second of video at 60 s (FAVOR and video-SALMONN: 6.4 and 6).
EXPECTED = {"favor-vicuna13b": 6.4, "salmonn-vicuna13b": 6.0,
            "avllm-vicuna7b": (256 + 2 * 120) / 60, "small-qwen0.5b": 6.4}


@pytest.mark.parametrize("name", sorted(MODEL_PRESETS))
def test_preset_builds_and_feeds_expected_tokens_per_second(name):
    cfg = MODEL_PRESETS[name]
    assert cfg.dims.resolved
    again = from_dict(ModelConfig, yaml.safe_load(dump_yaml(cfg)))   # YAML round trip
    assert again == cfg
    torch.manual_seed(0)
    connector = build_connector(cfg, llm_dim=64)
    slots = int(60 * cfg.encoders.fps)
    assert connector.tokens_for(slots) / 60 == pytest.approx(EXPECTED[name])
    assert set(EXPECTED) == set(MODEL_PRESETS)


def test_connector_config_errors_name_the_field():
    with pytest.raises(ConfigError) as err:
        ConnectorConfig("causal_qformer", window_s=(5.0, 0.5), queries=(30, 3))
    assert err.value.field == "window_s"
    with pytest.raises(ConfigError) as err:
        ConnectorConfig("qformer", window_s=(5.0,))
    assert err.value.field == "window_s"
    with pytest.raises(ConfigError) as err:
        ConnectorConfig(queries=(32, 4))
    assert err.value.field == "queries"
    with pytest.raises(ConfigError) as err:
        dataclasses.replace(MODEL_PRESETS["favor-vicuna13b"],
                            connector=ConnectorConfig(window_s=(0.75,)))
    assert err.value.field == "connector.window_s"
    mrc = dataclasses.replace(MODEL_PRESETS["salmonn-vicuna13b"],
                              connector=ConnectorConfig("mrc_qformer", window_s=(5.0, 0.5),
                                                        queries=(30, 4), audio_proj_dim=1536))
    with pytest.raises(ConfigError) as err:
        build_connector(mrc, llm_dim=64)
    assert err.value.field == "connector.queries"


def test_interleave_gives_a_slot_its_visual_tokens_plus_its_audio_frames():
    cfg = MODEL_PRESETS["favor-vicuna13b"]
    torch.manual_seed(0)
    concat = build_connector(cfg, llm_dim=64)
    inter = dataclasses.replace(cfg, connector=dataclasses.replace(
        cfg.connector, stream_fusion="interleave"))
    connector = build_connector(inter, llm_dim=64)
    frames = frames_per_slot(cfg.encoders.fps, cfg.dims.audio_rate)
    assert concat.cfg.slot_tokens == max(cfg.dims.video_tokens, frames)
    assert connector.cfg.slot_tokens == cfg.dims.video_tokens + frames
    assert connector.tokens_for(120) == concat.tokens_for(120)       # same LLM tokens
    with pytest.raises(ConfigError) as err:
        from_dict(ModelConfig, {"connector": {"stream_fusion": "sum"}})
    assert err.value.field == "connector.stream_fusion"
