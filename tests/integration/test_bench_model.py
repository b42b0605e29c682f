"""`avray bench-model` end to end at a toy size: corpus, features, two connectors and an
ablation trained as Ray tasks over two seeds, evaluation per family, table + PNG + RESULTS
section, MLflow (the summary run and one nested run per training run with its loss curve)."""

from __future__ import annotations

import json

import pytest

from av_model.configlib import ConfigError, from_dict
from pipelines import bench_model, bench_report

pytestmark = pytest.mark.slow


def test_bench_model_small(tmp_path, mlflow_server, ray_local, monkeypatch):
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# Benchmark results\n\n## Other\n\nkept\n")
    overrides = [
        "synth.n=16", "steps=6", "batch_size=4", "log_every=4",
        "connectors=[causal_qformer,qformer]", "ablations=[audio]", "ray.progress_bars=false",
        "teach_visual.steps=5", "teach_audio.steps=3", "llm_dim=32", "seeds=2",
        f"results_md={results_md}", f"tracking.uri={mlflow_server}"]
    out = bench_model.main(["--workdir", str(tmp_path / "bm"), *overrides])
    runs = [r["run"] for r in out["results"]]
    assert runs == [n for n in ("causal_qformer/both", "qformer/both", "causal_qformer/audio")
                    for _ in range(2)]
    assert [r["seed"] for r in out["results"]] == [0, 1] * 3
    # The seeds train different models (initialisation, data order).
    first, second = out["results"][:2]
    assert first["final_loss"] != second["final_loss"]
    for r in out["results"]:
        assert r["errors"] == 0 and r["n"] > 0 and 0.0 <= r["accuracy"] <= 1.0
        assert {"vision", "order"} <= set(r["families"])
        assert sum(r["family_n"].values()) == r["n"]
    assert open(out["plot"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    text = results_md.read_text()
    assert "kept" in text and text.count(bench_report.SECTION_BEGIN) == 1
    assert "| causal_qformer/audio |" in text and "](bench_model.png)" in text
    assert " ± " in text and "over 2 training seeds" in text
    assert "LLM (no system prompt)" in text
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

    run_dir = tmp_path / "bm" / "runs" / "causal_qformer_both_seed0"
    model_cfg = load_model_config(str(run_dir / "model"))
    assert model_cfg.encoders.visual.name_or_path == str(data / "visual")
    assert model_cfg.encoders.audio.name_or_path == str(data / "audio")
    assert model_cfg.llm.system_prompt == ""      # the bench's default: no preamble
    llm = json.loads((tmp_path / "bm" / "encoders" / "llm" / "config.json").read_text())
    assert (llm["hidden_size"], llm["num_hidden_layers"]) == (32, 2)
    probes = feature_probe.main(["--features", str(data / "features"),
                                 "--manifest", str(data / "synth" / "manifest.jsonl")])
    assert {"tone", "colour", "sync_is_first_shape"} <= set(probes)
    assert all(0.0 <= p["accuracy"] <= 1.0 and p["examples"] > 0 for p in probes.values())

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    run = client.get_run(out["run_id"])
    # The summary holds each configuration's mean over its seeds and their spread.
    vision = [r["families"]["vision"] for r in out["results"][:2]]
    assert run.data.metrics["causal_qformer.both.vision"] == pytest.approx(sum(vision) / 2)
    assert run.data.metrics["causal_qformer.both.vision.sd"] == pytest.approx(
        abs(vision[0] - vision[1]) / 2 ** 0.5)
    assert {a.path for a in client.list_artifacts(out["run_id"])} >= {
        "results.md", "results.json", "bench_model.png"}
    # Each run is a nested run of the benchmark's: its params, its loss curve, and the same
    # held-out scores the report shows.
    children = client.search_runs([run.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{out['run_id']}'")
    by_name = {c.info.run_name: c for c in children}
    assert sorted(by_name) == sorted(f"{r['run']} seed {r['seed']}" for r in out["results"])
    for r in out["results"]:
        child = by_name[f"{r['run']} seed {r['seed']}"]
        assert child.info.status == "FINISHED"
        assert child.data.params["model.connector.kind"] == r["connector"]
        assert child.data.params["bench.modalities"] == ",".join(r["modalities"])
        loss = client.get_metric_history(child.info.run_id, "loss")
        assert sorted(m.step for m in loss) == [4, 6]              # log_every=4, and the last
        assert child.data.metrics["accuracy"] == pytest.approx(r["accuracy"])
        assert child.data.metrics["accuracy.order"] == pytest.approx(r["families"]["order"])

    # A run's data order is its seed's, not the shards' row order (the extraction's completion
    # order, which differs between two builds of the same features): the same rows read in
    # reverse train the same model.
    from pipelines import train_data

    cfg = bench_model.jobs.parse_job_config(
        bench_model.BenchConfig, [f"workdir={tmp_path / 'bm'}", *overrides], "")
    with bench_model.jobs.ray_session(cfg.ray):
        paths = bench_model.prepare_data(cfg)
    spec = bench_model.RunSpec("qformer")
    tcfg = bench_model.run_config(cfg, spec, paths)
    read = train_data.read_rows
    shard_order, _ = bench_model._train_and_evaluate(cfg, spec, paths, str(tmp_path / "a"), tcfg)
    monkeypatch.setattr(train_data, "read_rows", lambda *a, **k: read(*a, **k)[::-1])
    reversed_, _ = bench_model._train_and_evaluate(cfg, spec, paths, str(tmp_path / "b"), tcfg)
    assert reversed_["final_loss"] == shard_order["final_loss"]


def test_write_section_replaces_its_own_block(tmp_path):
    path = tmp_path / "R.md"
    bench_report.write_section(str(path), "first")
    bench_report.write_section(str(path), "second")
    text = path.read_text()
    assert "second" in text and "first" not in text and text.count("## Synthetic") == 1


@pytest.mark.parametrize("patch,field", [({"connectors": ["mlp"]}, "connectors"),
                                         ({"seeds": 0}, "seeds"),
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


def test_runs_repeat_each_configuration_over_the_seeds():
    cfg = from_dict(bench_model.BenchConfig, {"connectors": ["linear"], "ablations": ["audio"],
                                              "seed": 5, "seeds": 3})
    runs = cfg.runs()
    assert [(r.name, r.seed) for r in runs] == [
        ("linear/both", 5), ("linear/both", 6), ("linear/both", 7),
        ("causal_qformer/audio", 5), ("causal_qformer/audio", 6), ("causal_qformer/audio", 7)]
    assert len({r.slug for r in runs}) == 6


def test_table_gives_mean_and_spread_over_seeds():
    def run(name, seed, vision, sync):
        return {"run": name, "seed": seed, "families": {"vision": vision, "sync": sync},
                "accuracy": (vision + sync) / 2, "train_s": 10.0, "final_loss": 0.1,
                "n": 4, "family_n": {"vision": 2, "sync": 2}}
    results = [run("linear/both", 0, 1.0, 0.5), run("linear/both", 1, 0.5, 0.5),
               run("qformer/both", 0, 0.25, 0.75),
               {"run": "qformer/both", "seed": 1, "error": "RuntimeError: boom"}]
    rows = bench_report.summarise(results)
    assert [r["run"] for r in rows] == ["linear/both", "qformer/both"]
    assert rows[0]["families"] == {"vision": 0.75, "sync": 0.5}
    assert rows[0]["families_sd"]["vision"] == pytest.approx(0.5 / 2 ** 0.5)
    assert [(r["seeds"], r["failed"]) for r in rows] == [(2, 0), (1, 1)]
    text = bench_report.table(results)
    assert "| linear/both | 75.0 ± 35.4 | 50.0 ± 0.0 | 62.5 ± 17.7 | 10 | 0.100 |" in text
    assert "| qformer/both (1 of 2 seeds failed) | 25.0 ± 0.0 | 75.0 ± 0.0 |" in text
    assert "over 2 training seeds" in text


def test_stream_queries_reach_every_q_former_and_keep_mrc_rates_equal(tmp_path):
    from av_model.tiny import save_tiny_models

    enc = save_tiny_models(tmp_path / "enc")
    paths = {**enc, "model_yaml": str(tmp_path / "enc" / "model.yaml"),
             "features": str(tmp_path / "features")}
    cfg = from_dict(bench_model.BenchConfig, {"stream_queries": True})
    kinds = {}
    for kind in bench_model.CONNECTORS:
        c = bench_model.run_config(cfg, bench_model.RunSpec(kind), paths).model.connector
        kinds[kind] = (c.stream_fusion, c.stream_queries, c.window_s, c.queries)
    assert kinds["linear"][:2] == ("concat", False)
    assert kinds["causal_qformer"] == ("interleave", True, (2.0,), (4,))
    assert kinds["qformer"] == ("interleave", True, (0.0,), (4,))
    assert kinds["mrc_qformer"] == ("interleave", True, (2.0, 1.0), (4, 2))
    plain = bench_model.run_config(from_dict(bench_model.BenchConfig, {}),
                                   bench_model.RunSpec("causal_qformer"), paths)
    assert (plain.model.connector.stream_fusion, plain.model.connector.stream_queries) == \
        ("concat", False)


def test_runs_drop_the_system_prompt_unless_one_is_given(tmp_path):
    from av_model.tiny import save_tiny_models

    enc = save_tiny_models(tmp_path / "enc")
    paths = {**enc, "model_yaml": str(tmp_path / "enc" / "model.yaml"),
             "features": str(tmp_path / "features")}
    spec = bench_model.RunSpec("linear")
    plain = bench_model.run_config(from_dict(bench_model.BenchConfig, {}), spec, paths)
    assert plain.model.llm.system_prompt == ""
    given = from_dict(bench_model.BenchConfig, {"system_prompt": "Answer briefly."})
    assert bench_model.run_config(given, spec, paths).model.llm.system_prompt == \
        "Answer briefly."
