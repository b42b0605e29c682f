"""`avray bench-model` end to end at a toy size: corpus, features, two connectors and an
ablation trained as Ray tasks, evaluation per family, table + PNG + RESULTS section, MLflow
(the summary run and one nested run per connector run with its loss curve)."""

from __future__ import annotations

import json

import pytest

from av_model.configlib import ConfigError, from_dict
from pipelines import bench_model, bench_report

pytestmark = pytest.mark.slow


def test_bench_model_small(tmp_path, mlflow_server, ray_local):
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# Benchmark results\n\n## Other\n\nkept\n")
    out = bench_model.main([
        "--workdir", str(tmp_path / "bm"), "synth.n=16", "steps=6", "batch_size=4", "log_every=4",
        "connectors=[causal_qformer,qformer]", "ablations=[audio]", "ray.progress_bars=false",
        "teach_visual.steps=5", "teach_audio.steps=3", "llm_dim=32",
        f"results_md={results_md}", f"tracking.uri={mlflow_server}"])
    runs = [r["run"] for r in out["results"]]
    assert runs == ["causal_qformer/both", "qformer/both", "causal_qformer/audio"]
    for r in out["results"]:
        assert r["errors"] == 0 and r["n"] > 0 and 0.0 <= r["accuracy"] <= 1.0
        assert {"vision", "order"} <= set(r["families"])
        assert sum(r["family_n"].values()) == r["n"]
    assert open(out["plot"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    text = results_md.read_text()
    assert "kept" in text and text.count(bench_report.SECTION_BEGIN) == 1
    assert "| causal_qformer/audio |" in text and "](bench_model.png)" in text
    assert (tmp_path / "bench_model.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "bm" / "results.json").read_text())
    assert [r["run"] for r in saved["results"]] == runs

    from benchmarks import feature_probe

    [data] = (tmp_path / "bm").glob("data-*")
    # The features come from the taught towers, and the runs' models name them; the LLM is
    # the bench's own size.
    assert json.loads((data / "visual" / "taught.json").read_text())["steps"] == 5
    assert json.loads((data / "audio" / "taught.json").read_text())["steps"] == 3
    from av_model.checkpoint import load_model_config

    model_cfg = load_model_config(str(tmp_path / "bm" / "runs" / "causal_qformer_both" / "model"))
    assert model_cfg.encoders.visual.name_or_path == str(data / "visual")
    assert model_cfg.encoders.audio.name_or_path == str(data / "audio")
    llm = json.loads((tmp_path / "bm" / "encoders" / "llm" / "config.json").read_text())
    assert (llm["hidden_size"], llm["num_hidden_layers"]) == (32, 2)
    probes = feature_probe.main(["--features", str(data / "features"),
                                 "--manifest", str(data / "synth" / "manifest.jsonl")])
    assert {"tone", "colour", "sync_is_first_shape"} <= set(probes)
    assert all(0.0 <= p["accuracy"] <= 1.0 and p["examples"] > 0 for p in probes.values())

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    run = client.get_run(out["run_id"])
    assert "causal_qformer.both.vision" in run.data.metrics
    assert {a.path for a in client.list_artifacts(out["run_id"])} >= {
        "results.md", "results.json", "bench_model.png"}
    # Each run is a nested run of the benchmark's: its params, its loss curve, and the same
    # held-out scores the report shows.
    children = client.search_runs([run.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{out['run_id']}'")
    by_name = {c.info.run_name: c for c in children}
    assert sorted(by_name) == sorted(runs)
    for r in out["results"]:
        child = by_name[r["run"]]
        assert child.info.status == "FINISHED"
        assert child.data.params["model.connector.kind"] == r["connector"]
        assert child.data.params["bench.modalities"] == ",".join(r["modalities"])
        loss = client.get_metric_history(child.info.run_id, "loss")
        assert sorted(m.step for m in loss) == [4, 6]              # log_every=4, and the last
        assert child.data.metrics["accuracy"] == pytest.approx(r["accuracy"])
        assert child.data.metrics["accuracy.order"] == pytest.approx(r["families"]["order"])


def test_write_section_replaces_its_own_block(tmp_path):
    path = tmp_path / "R.md"
    bench_report.write_section(str(path), "first")
    bench_report.write_section(str(path), "second")
    text = path.read_text()
    assert "second" in text and "first" not in text and text.count("## Synthetic") == 1


@pytest.mark.parametrize("patch,field", [({"connectors": ["mlp"]}, "connectors"),
                                         ({"ablations": ["smell"]}, "ablations"),
                                         ({"synth": {"split_fractions": {"train": 1.0}}},
                                          "synth.split_fractions")])
def test_config_errors(patch, field):
    with pytest.raises(ConfigError) as err:
        from_dict(bench_model.BenchConfig, patch)
    assert err.value.field == field


def test_table_shows_a_failed_run_and_keeps_the_others():
    ok = {"run": "linear/both", "families": {"vision": 1.0, "sync": 0.5}, "accuracy": 0.75,
          "train_s": 10.0, "final_loss": 0.1, "n": 4, "family_n": {"vision": 2, "sync": 2}}
    text = bench_report.table([ok, {"run": "qformer/both", "error": "RuntimeError: boom"}])
    assert "| linear/both | 100.0 | 50.0 | 75.0 | 10 | 0.100 |" in text
    assert "| qformer/both | failed: RuntimeError: boom |" in text
    assert "| questions | 2 | 2 | 4 | | |" in text
