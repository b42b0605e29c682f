"""Can the stored features answer the synthetic questions at all? Ridge-regression probes.

Why: when ``avray bench-model`` scores low, this separates "the encoders lose the
information" from "the connector + LLM did not learn to read it". Each probe is a closed-form
ridge classifier on 80% of the examples, scored on the other 20%:
    tone        high / low, from the clip's audio features (mean and std over time)
    beeps       the beep count, from audio mean / std / max
    colour      the colour of the single visible shape, from one frame's visual tokens
    kind        its kind (square / circle / triangle), from the same frame
and one corpus check: how often the sync answer (the shape on screen at the first beep) is
simply the first shape's colour, the score of a model that knows order but never listens.

    python -m benchmarks.feature_probe --features runs/bench-model/data-*/features \\
        --manifest runs/bench-model/data-*/synth/manifest.jsonl
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from pipelines.corpora.synthetic import COLOURS, KINDS
from pipelines.train_data import read_rows


def examples(features: str, manifest: str) -> dict[str, tuple[list, list]]:
    with open(manifest) as f:
        plans = {r["clip_id"]: json.loads(r["meta"]) for r in map(json.loads, f)}
    out: dict[str, tuple[list, list]] = {k: ([], []) for k in ("tone", "beeps", "colour", "kind")}
    for row in read_rows(features):
        plan = plans[row["clip_id"]]
        a = np.asarray(row["audio"], dtype=np.float32)
        v = np.asarray(row["video"], dtype=np.float32)
        if a.size and plan["tone"]:
            out["tone"][0].append(np.concatenate([a.mean(0), a.std(0)]))
            out["tone"][1].append(int(plan["tone"]["class"] == "high"))
            out["beeps"][0].append(np.concatenate([a.mean(0), a.std(0), a.max(0)]))
            out["beeps"][1].append(len(plan["beeps"]))
        fps = row.get("fps") or 2.0
        for t in range(v.shape[0]):
            at = (t + 0.5) / fps
            shown = [s for s in plan["shapes"] if s["t_on"] <= at <= s["t_off"]]
            if len(shown) == 1:
                for key, label in (("colour", list(COLOURS).index(shown[0]["colour"])),
                                   ("kind", KINDS.index(shown[0]["kind"]))):
                    out[key][0].append(v[t].reshape(-1))
                    out[key][1].append(label)
    return out


def sync_shortcut_rate(manifest: str) -> dict[str, float]:
    """Share of sync questions whose answer is the colour of the clip's first shape."""
    from pipelines.corpora import synthetic

    total = first = 0
    with open(manifest) as f:
        for plan in (json.loads(r["meta"]) for r in map(json.loads, f)):
            sync = synthetic.candidates(plan)["sync"]
            if sync:
                total += 1
                first += sync[0][1] == plan["shapes"][0]["colour"]
    return {"accuracy": first / total if total else 0.0, "examples": total}


def probe(x: list, y: list, ridge: float = 10.0, seed: int = 0) -> float:
    """Held-out accuracy of a one-vs-rest ridge classifier (standardised inputs)."""
    X, labels = np.array(x), np.array(y)
    classes = np.unique(labels)
    idx = np.random.default_rng(seed).permutation(len(X))
    tr, te = idx[: int(0.8 * len(X))], idx[int(0.8 * len(X)):]
    mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-6
    X = (X - mu) / sd
    Y = (labels[:, None] == classes[None, :]).astype(float)
    W = np.linalg.solve(X[tr].T @ X[tr] + ridge * np.eye(X.shape[1]), X[tr].T @ Y[tr])
    return float((classes[np.argmax(X[te] @ W, 1)] == labels[te]).mean())


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", required=True, help="an extraction output directory")
    parser.add_argument("--manifest", required=True, help="the synthetic manifest.jsonl")
    args = parser.parse_args(argv)
    results = {k: {"accuracy": probe(x, y), "examples": len(x)}
               for k, (x, y) in examples(args.features, args.manifest).items() if len(x) > 10}
    results["sync_is_first_shape"] = sync_shortcut_rate(args.manifest)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
