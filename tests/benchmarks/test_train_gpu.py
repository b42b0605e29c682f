"""`benchmarks.train_gpu` end to end on CPU at a toy size: the LoRA step runs through the
training loop, the report has its figures, and the counted FLOPs agree with the analytic
formula (frozen base: backward = input gradients only), which is what MFU rests on."""

from __future__ import annotations

import json

import pytest

from av_model.tiny import TinySizes, save_tiny_llm
from benchmarks import train_gpu


def test_smoke_report_and_flops(tmp_path):
    llm = save_tiny_llm(tmp_path / "llm", TinySizes(), 0)
    out = tmp_path / "report.json"
    report = train_gpu.main([
        "--device", "cpu", "--precision", "fp32", "--connector", "tiny", "--llm-path", str(llm),
        "--seconds", "10", "--batch", "2", "--steps", "4", "--warmup", "1", "--modes", "plain",
        "--peak-tflops", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["batch"] == 2 and report["skipped"] == {}
    # tiny connector: 4 queries per 2 s window -> 20 media tokens per 10 s clip, plus text
    assert report["tokens_per_step"] > 2 * 20
    r = report["results"]["plain"]
    assert r["step_s"] > 0 and r["tokens_per_s"] > 0 and r["samples_per_s"] > 0
    assert r["tokens_per_s"] == pytest.approx(report["tokens_per_step"] / r["step_s"])
    assert r["samples_per_s"] == pytest.approx(2 / r["step_s"])

    counted, analytic = report["flops_counted"], report["flops_analytic"]
    # forward + backward must exceed the forward matmuls alone
    assert counted["step"] > analytic["llm_forward_matmul_only"]
    assert counted["llm"] + counted["connector"] == counted["step"]
    # torch has no FLOP formula for CPU SDPA: compare the LLM without attention there
    expected = analytic["llm_step"] - (0 if counted["counted_includes_attention"]
                                       else analytic["llm_attention_step"])
    assert counted["llm"] == pytest.approx(expected, rel=0.01)
    assert 0 < counted["connector"] <= analytic["connector_6n"]  # 6N is an upper bound
    assert r["mfu"] == pytest.approx(counted["step"] / r["step_s"] / 1e12)
    assert 0 < r["mfu"] < 1 and r["mfu_6n"] > r["mfu"]


@pytest.mark.parametrize("kwargs", [dict(steps=5, warmup=4), dict(modes=("zero9",))])
def test_config_rejects(kwargs):
    with pytest.raises(ValueError):
        train_gpu.BenchConfig(**kwargs)
