"""Stage 5 of ``avray bench-model``: the table, the plot, the Markdown section, MLflow
(a parent run with the summary, one nested run per connector run with its loss curve).

Kept apart from the runner so the benchmark's orchestration and its presentation stay
one screen each.
"""

from __future__ import annotations

import os
import statistics
from typing import TYPE_CHECKING, Any

from av_model.configlib import to_dict

if TYPE_CHECKING:
    from pipelines.tracking import Tracker   # imports mlflow: only where a run is opened

FAMILIES = ("vision", "audio", "sync", "order", "speech")
SECTION_BEGIN, SECTION_END = "<!-- bench-model:begin -->", "<!-- bench-model:end -->"
TURNS = {"one": "one random question of the clip per sample",
         "all": "all of a clip's questions as one conversation"}
EXPERIMENT = "avray-bench-model"   # MLflow experiment unless tracking.experiment is set


def families_present(results: list[dict[str, Any]]) -> list[str]:
    seen = {f for r in results for f in r.get("families", {})}
    return [f for f in FAMILIES if f in seen]


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration (run name), in first-seen order, over its seeds: the mean
    accuracy per family and overall, their standard deviation over seeds (``*_sd``, 0 for
    one seed), mean train time and final loss, and how many seeds scored (``seeds``) and
    failed (``failed``). A configuration whose every seed failed keeps the first error."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(r["run"], []).append(r)
    rows = []
    for name, runs in groups.items():
        done = [r for r in runs if "error" not in r]
        if not done:
            rows.append({"run": name, "error": runs[0]["error"], "seeds": 0,
                         "failed": len(runs)})
            continue
        fams = [f for f in FAMILIES if all(f in r["families"] for r in done)]
        per_family = {f: _mean_sd([r["families"][f] for r in done]) for f in fams}
        acc, acc_sd = _mean_sd([r["accuracy"] for r in done])
        rows.append({
            "run": name, "seeds": len(done), "failed": len(runs) - len(done),
            "families": {f: m for f, (m, _) in per_family.items()},
            "families_sd": {f: sd for f, (_, sd) in per_family.items()},
            "accuracy": acc, "accuracy_sd": acc_sd,
            "train_s": statistics.fmean(r["train_s"] for r in done),
            "final_loss": statistics.fmean(r["final_loss"] for r in done),
            "n": done[0]["n"], "family_n": done[0]["family_n"]})
    return rows


def table(results: list[dict[str, Any]]) -> str:
    """Accuracy (%) per configuration and family, with the item counts of the first run;
    over several seeds, mean ± standard deviation (and the count of failed seeds)."""
    rows = summarise(results)
    seeds = max((r["seeds"] + r["failed"] for r in rows), default=0)   # per configuration
    several = seeds > 1
    fams = families_present(results)
    lines = ["| run | " + " | ".join(fams) + " | all | train s | final loss |",
             "|---|" + "---|" * (len(fams) + 3)]

    def cell(mean: float, sd: float) -> str:
        return f"{100 * mean:.1f} ± {100 * sd:.1f}" if several else f"{100 * mean:.1f}"
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['run']} | failed: {r['error'][:80]} |")
            continue
        cells = [cell(r["families"][f], r["families_sd"][f]) if f in r["families"] else "–"
                 for f in fams]
        name = r["run"] + (f" ({r['failed']} of {r['seeds'] + r['failed']} seeds failed)"
                           if r["failed"] else "")
        lines.append(f"| {name} | " + " | ".join(cells) +
                     f" | {cell(r['accuracy'], r['accuracy_sd'])} | {r['train_s']:.0f} | "
                     f"{r['final_loss']:.3f} |")
    done = [r for r in rows if "error" not in r]
    counts = done[0]["family_n"] if done else {}
    lines.append("| questions | " + " | ".join(str(counts.get(f, "–")) for f in fams) +
                 f" | {done[0]['n'] if done else 0} | | |")
    if several:
        lines += ["", f"Mean ± standard deviation over {seeds} training seeds; per-seed "
                  "scores in results.json and the nested MLflow runs."]
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: str) -> str:
    """Grouped bars: accuracy per family, one bar per run. A bare ``Figure`` needs no pyplot
    backend: ``matplotlib.use("Agg")`` here would switch a calling notebook's backend too."""
    import numpy as np
    from matplotlib.figure import Figure

    fams = families_present(results)
    rows = [r for r in summarise(results) if "error" not in r]
    x = np.arange(len(fams))
    width = 0.8 / max(len(rows), 1)
    fig = Figure(figsize=(1.6 * len(fams) + 3, 4))
    ax = fig.subplots()
    for i, r in enumerate(rows):
        sd = [100 * r["families_sd"].get(f, np.nan) for f in fams] if r["seeds"] > 1 else None
        ax.bar(x + i * width - 0.4 + width / 2,
               [100 * r["families"].get(f, np.nan) for f in fams], width, yerr=sd,
               capsize=2, label=r["run"])
    ax.set_xticks(x, fams)
    ax.set_ylabel("accuracy on held-out clips (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("synthetic audio-visual benchmark: accuracy per task family")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def report(cfg, results: list[dict[str, Any]], timings: dict[str, float],
           command: str) -> str:
    """The Markdown section: the command, setup, the table, the timings."""
    s, tv, ta = cfg.synth, cfg.teach_visual, cfg.teach_audio
    return "\n".join([
        "```bash", command, "```", "",
        f"- corpus: {s.n} synthetic clips of {s.min_duration_s:g}–{s.max_duration_s:g} s, "
        f"{s.min_shapes}–{s.max_shapes} shapes, split {s.split_fractions}; every well-posed "
        "question of each test clip is asked",
        "- features: " + (f"the tiny vision tower taught the shapes for {tv.steps} steps on "
                          "the train clips" if tv.steps else "the random tiny vision tower")
        + ", " + (f"the tiny Whisper taught tone, beeps and words for {ta.steps} steps"
                  if ta.steps else "the random tiny Whisper"),
        f"- training: tiny encoders' stored features, a {cfg.llm_layers}-layer "
        f"{cfg.llm_dim}-wide {cfg.llm_mode} LLM ("
        + (f"system prompt {cfg.system_prompt!r}" if cfg.system_prompt else "no system prompt")
        + f"), {cfg.steps} "
        f"steps × {cfg.batch_size} clips ({TURNS[cfg.turns]}"
        + (f"; {cfg.caption_mix:.0%} of samples the clip's caption" if cfg.caption_mix else "")
        + ")" + (f", {cfg.seeds} training seeds per configuration" if cfg.seeds > 1 else "")
        + ", connector output norm "
        f"{cfg.output_norm}, lr {cfg.lr:g}"
        + (f" (connector {cfg.connector_lr:g})" if cfg.connector_lr else "")
        + f", one CPU thread per run, {cfg.parallel} runs at a time",
        "- Q-Formers: " + ("each stream at positions of its own, half of each window's "
                           "queries per stream (`stream_queries`)" if cfg.stream_queries else
                           "FAVOR's layout, a frame's tokens and its audio concatenated on the "
                           "feature dim, one set of queries"),
        "- evaluation: greedy answers (≤ %d tokens), accuracy after answer normalisation"
        % cfg.max_tokens, "",
        table(results), "",
        "Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()), ""])


def write_section(path: str, body: str) -> None:
    """Replace (or append) the bench-model section of a Markdown file."""
    text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    section = f"{SECTION_BEGIN}\n{body}\n{SECTION_END}"
    if SECTION_BEGIN in text and SECTION_END in text:
        head, rest = text.split(SECTION_BEGIN, 1)
        text = head + section + rest.split(SECTION_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Synthetic audio-visual benchmark (`avray " \
               "bench-model`)\n\n" + section + "\n"
    with open(path, "w") as f:
        f.write(text)


def start_parent(cfg) -> Tracker:
    """The benchmark's MLflow run, opened before training so each run can nest under it."""
    from pipelines.tracking import Tracker

    tracker = Tracker(cfg.tracking.uri, cfg.workdir, cfg.tracking.experiment or EXPERIMENT,
                      run_name="bench-model")
    tracker.log_params(to_dict(cfg))
    return tracker


def parent_info(tracker: Tracker, cfg) -> dict[str, str]:
    """What a run's Ray task needs to open its nested run (plain strings: no client)."""
    return {"uri": tracker.tracking_uri, "run_id": tracker.run_id,
            "storage": os.path.abspath(cfg.workdir),
            "experiment": cfg.tracking.experiment or EXPERIMENT}


def start_child(parent: dict[str, str], name: str, modalities: tuple[str, ...],
                train_config: dict[str, Any]) -> Tracker:
    """One connector run as a nested MLflow run: the training config's params (connector
    kind, LLM mode, stage ...) as a training job logs them, plus the streams it sees."""
    from pipelines.tracking import Tracker

    tracker = Tracker(parent["uri"], parent["storage"], parent["experiment"], run_name=name,
                      parent_run_id=parent["run_id"])
    tracker.log_params({**train_config, "bench": {"run": name,
                                                  "modalities": ",".join(modalities)}})
    return tracker


def finish_child(tracker: Tracker, result: dict[str, Any], history: list[dict[str, Any]],
                 log_every: int) -> None:
    """The loop's metrics (loss, lr, grad_norm, throughput) every ``log_every`` steps and at
    the last (after training, so that MLflow calls never count in ``train_s``), then the
    held-out scores (overall and per family) and timings; closes the run."""
    last = int(history[-1]["step"]) if history else 0
    for metrics in history:
        step = int(metrics["step"])
        if step % log_every == 0 or step == last:
            tracker.log_metrics(metrics, step)
    scores = {"accuracy": result["accuracy"], "final_loss": result["final_loss"],
              "train_s": result["train_s"], "eval_s": result["eval_s"],
              "questions": result["n"], "eval_errors": result["errors"]}
    scores.update({f"accuracy.{f}": v for f, v in result["families"].items()})
    tracker.log_metrics(scores, last)
    tracker.client.set_terminated(tracker.run_id)


def log_to_mlflow(tracker: Tracker, results: list[dict[str, Any]], md: str, png: str) -> str:
    """The summary on the parent run: accuracy per configuration and family (the mean over
    seeds, and ``.sd`` beside it when there are several), the report, the plot."""
    metrics = {}
    for r in (r for r in summarise(results) if "error" not in r):
        key = r["run"].replace("/", ".")
        metrics[f"{key}.all"] = r["accuracy"]
        metrics.update({f"{key}.{f}": v for f, v in r["families"].items()})
        if r["seeds"] > 1:
            metrics[f"{key}.all.sd"] = r["accuracy_sd"]
            metrics.update({f"{key}.{f}.sd": v for f, v in r["families_sd"].items()})
    tracker.log_metrics(metrics, step=0)
    tracker.client.log_text(tracker.run_id, md, "results.md")
    tracker.client.log_dict(tracker.run_id, {"results": results}, "results.json")
    tracker.client.log_artifact(tracker.run_id, png)
    tracker.client.set_terminated(tracker.run_id)
    return tracker.run_id
