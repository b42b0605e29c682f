"""The ``avray`` console script: one entry point that dispatches to each job's ``main``.

    avray synth --out data/synth --n 200          synthetic audio-visual corpus
    avray tiny --out .cache/tiny                  tiny random-weight encoders for tests
    avray manifest --corpus webvid --metadata results_2M_val.csv --media-root videos/ \\
                   --out manifest.parquet         corpus metadata → a manifest
    avray extract --config pipelines/configs/extract/tiny.yaml key=value ...
    avray evaluate --config pipelines/configs/evaluate/aveb.yaml checkpoint=...
    avray bench-model --workdir runs/bench-model  the synthetic connector benchmark
    avray quickstart --workdir data/quickstart    the end-to-end demo
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "synth": "pipelines.corpora.synthetic",
    "tiny": "av_model.tiny",
    "manifest": "pipelines.manifest",
    "extract": "pipelines.extract_features",
    "quickstart": "pipelines.quickstart",
    "evaluate": "pipelines.evaluate",
    "bench-model": "pipelines.bench_model",
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    module = importlib.import_module(COMMANDS[argv[0]])
    module.main(argv[1:])


if __name__ == "__main__":
    main()
