"""Build a manifest (DESIGN §3) from a corpus's own metadata, and its errors table.

    python -m pipelines.manifest --corpus vggsound --metadata vggsound.csv \\
        --media-root /data/vggsound/video --out data/vggsound/manifest.parquet
    avray manifest --corpus webvid --metadata s3://bucket/results_2M_val.csv \\
        --media-root s3://bucket/videos --out s3://bucket/manifests/webvid_val.parquet

Errors (missing files, malformed rows) go to ``<out stem>.errors.parquet``.
"""

from __future__ import annotations

import argparse
import logging

from pipelines import jobs, storage
from pipelines.corpora import ADAPTERS, build_manifest
from pipelines.corpora.base import ERROR_SCHEMA, rows_to_table, write_manifest

log = logging.getLogger("avray.manifest")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="avray manifest", description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True, choices=sorted(ADAPTERS))
    parser.add_argument("--metadata", required=True, help="the corpus's metadata file")
    parser.add_argument("--media-root", default=None, help="directory or s3:// prefix of media")
    parser.add_argument("--out", required=True, help="manifest file (.parquet or .jsonl)")
    parser.add_argument("--split", default=None)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--no-check-files", action="store_true")
    args = parser.parse_args(argv)
    jobs.setup_logging()
    kwargs = {"check_files": not args.no_check_files, "limit": args.limit}
    if args.split:
        kwargs["split"] = args.split
    result = build_manifest(args.corpus, metadata=args.metadata, media_root=args.media_root,
                            **kwargs)
    write_manifest(result.rows, args.out)
    errors_uri = args.out.rsplit(".", 1)[0] + ".errors.parquet"
    storage.write_parquet(rows_to_table(result.errors, ERROR_SCHEMA), errors_uri)
    log.info("%d rows → %s; %d errors → %s", len(result.rows), args.out, len(result.errors),
             errors_uri)


if __name__ == "__main__":
    main()
