"""The end-to-end demo on the built-in synthetic corpus (``make quickstart``).

    avray quickstart --workdir data/quickstart [--n 24]
    python -m pipelines.quickstart --workdir data/quickstart

What exists today: tiny random-weight encoders → synthetic audio-visual corpus (real mp4
files) → Ray Data feature extraction → parquet feature shards. Later stages (training,
evaluation, serving) join this script as they land.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

from av_model.configlib import load_config
from av_model.tiny import save_tiny_models
from pipelines import extract_features, jobs
from pipelines.corpora import synthetic

log = logging.getLogger("avray.quickstart")
CONFIG = os.path.join(os.path.dirname(__file__), "configs", "extract", "tiny.yaml")


def _stage(n: int, total: int, text: str) -> None:
    log.info("[%d/%d] %s", n, total, text)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="avray quickstart", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="data/quickstart")
    parser.add_argument("--n", type=int, default=24, help="synthetic clips to generate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    jobs.setup_logging()
    work = os.path.abspath(args.workdir)
    start = time.perf_counter()

    _stage(1, 3, f"tiny random-weight encoders → {work}/encoders")
    enc = save_tiny_models(os.path.join(work, "encoders"), seed=args.seed)

    _stage(2, 3, f"synthetic corpus: {args.n} clips → {work}/synth")
    synth_cfg = synthetic.SynthConfig(n=args.n, seed=args.seed, min_duration_s=8.0,
                                      max_duration_s=10.0)
    synthetic.generate(synth_cfg, os.path.join(work, "synth"))

    _stage(3, 3, f"feature extraction (Ray Data) → {work}/features")
    cfg = load_config(extract_features.ExtractConfig, CONFIG, [
        f"corpus.path={work}/synth/manifest.jsonl", f"output={work}/features",
        f"encoders.visual.name_or_path={enc['visual']}",
        f"encoders.audio.name_or_path={enc['audio']}"])
    with jobs.ray_session(cfg.ray):
        summary = extract_features.run(cfg)

    log.info("done in %.0f s. Produced:\n  media     %s/synth/media (%d mp4 files)\n"
             "  manifest  %s/synth/manifest.jsonl\n  features  %s/features/features (parquet)\n"
             "  errors    %s/features/errors/errors.parquet\n  summary   %s",
             time.perf_counter() - start, work, args.n, work, work, work,
             json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
