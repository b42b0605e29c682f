"""Every YAML shipped under pipelines/configs loads into its job's config dataclass."""

import os
from pathlib import Path

import pytest

from av_model.configlib import load_config
from pipelines.eval_config import EvalConfig
from pipelines.extract_features import ExtractConfig
from pipelines.serve_config import ServeConfig
from pipelines.train_config import TrainConfig, load_train_config

CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"
JOBS = {"extract": ExtractConfig, "train": TrainConfig, "serve": ServeConfig,
        "evaluate": EvalConfig}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*/*.yaml")), ids=lambda p: p.name)
def test_shipped_yaml_loads(path: Path, tiny_encoders):
    cls = JOBS[path.parent.name]
    if cls is TrainConfig:
        # tiny-* name the model.yaml `avray tiny` writes; point them at the session's.
        tiny = os.path.join(os.path.dirname(tiny_encoders["llm"]), "model.yaml")
        overrides = [f"model_base={tiny}"] if path.name.startswith("tiny") else []
        cfg = load_train_config(str(path), overrides)
    elif cls in (ServeConfig, EvalConfig):
        cfg = load_config(cls, path, ["checkpoint=runs/x/model"])  # shipped blank: required
    else:
        cfg = load_config(cls, path)
    assert isinstance(cfg, cls)


def test_every_job_directory_is_covered():
    assert {p.name for p in CONFIGS.iterdir() if p.is_dir()} <= set(JOBS)


def test_cluster_serve_config_is_a_valid_serve_deploy_file():
    """cluster/serve_config.yaml passes Serve's own schema and its args build our config."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from ray.serve import Application

    from pipelines.serve import build_app, serve_config_from_args

    path = CONFIGS.parents[1] / "cluster" / "serve_config.yaml"
    schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    (app,) = schema.applications
    assert app.import_path == "pipelines.serve:build_app"
    cfg = serve_config_from_args(app.args)  # config: gpu is a shipped preset
    assert cfg.checkpoint.startswith("models:/") and cfg.media.allowed_root == "/mnt/media"
    assert cfg.deployments.generator.autoscaling["max_replicas"] == 4
    assert isinstance(build_app(app.args), Application)  # what `serve deploy` imports


@pytest.mark.parametrize("train, extract", [
    ("favor-align", "favor-instructblip-whisper-large-v2"),
    ("favor-instruct", "favor-instructblip-whisper-large-v2"),
    ("salmonn-instruct", "salmonn-instructblip-whisper-large-v2-ast")])
def test_model_presets_train_on_their_extract_presets_features(train, extract):
    """The extraction preset named for a model writes the features its model is built for
    (training refuses shards made by other encoders, so a mismatch would surface only on
    the cluster)."""
    from av_model.configlib import to_dict

    model = load_train_config(str(CONFIGS / "train" / f"{train}.yaml"), []).model
    written = load_config(ExtractConfig, CONFIGS / "extract" / f"{extract}.yaml").encoders
    assert to_dict(written) == to_dict(model.encoders)
