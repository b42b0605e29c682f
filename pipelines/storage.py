"""Storage URIs: local paths, ``file://`` and ``s3://``, one API for all jobs.

Why one module: every job reads manifests and media and writes shards through the same
three schemes, and ``s3://`` needs the same endpoint/credential handling everywhere
(``AWS_ENDPOINT_URL`` for S3-compatible stores such as MinIO or moto's server).
pyarrow's filesystem layer does the work; boto3 is used only to fetch media objects,
where its managed transfer is faster than a pyarrow stream.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import uuid
from pathlib import Path
from typing import IO, Iterator
from urllib.parse import urlparse

import pyarrow.fs as pafs


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def local_path(uri: str) -> str:
    """Strip ``file://``; leave plain paths as they are."""
    uri = str(uri)
    return uri[len("file://"):] if uri.startswith("file://") else uri


def as_url(uri: str) -> str:
    """A location as a URL: s3:// and file:// as given, a path made absolute and
    percent-encoded (so ``#``, ``?``, ``%`` and spaces survive URL parsing)."""
    uri = str(uri)
    if is_s3(uri) or uri.startswith("file://"):
        return uri
    return Path(os.path.abspath(uri)).as_uri()


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return (pyarrow filesystem, path inside it) for any supported URI."""
    uri = str(uri)
    if is_s3(uri):
        kwargs = {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
            kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), uri[len("s3://"):]
    return pafs.LocalFileSystem(), os.path.abspath(local_path(uri))


def join(base: str, *parts: str) -> str:
    base = str(base)
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)


def list_files(uri: str, suffix: str = "") -> list[str]:
    """Files directly under directory ``uri`` whose name ends with ``suffix`` (sorted URIs)."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    prefix = "s3://" if is_s3(uri) else ""
    return sorted(prefix + i.path for i in infos
                  if i.type == pafs.FileType.File and i.base_name.endswith(suffix))


def delete(uri: str) -> None:
    fs, path = filesystem(uri)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


@contextlib.contextmanager
def open_input(uri: str) -> Iterator[IO[bytes]]:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        yield f


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write a whole object so that readers see all of it or nothing.

    Local files go through a temp name and ``os.replace``; S3 objects appear atomically when
    their upload completes, so they are written in place.
    """
    if is_s3(uri):
        fs, path = filesystem(uri)
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    path = Path(local_path(uri))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_parquet(table, uri: str) -> str:
    """A pyarrow Table as one parquet object, written atomically (see write_bytes_atomic)."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_bytes_atomic(uri, buf.getvalue())
    return uri


def clean_temp_files(uri: str) -> int:
    """Remove ``.tmp-*`` leftovers of a killed run in a local directory; returns the count."""
    if is_s3(uri):
        return 0
    path = Path(local_path(uri))
    if not path.is_dir():
        return 0
    leftovers = list(path.glob(".tmp-*"))
    for p in leftovers:
        p.unlink(missing_ok=True)
    return len(leftovers)


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """Yield a local file path for ``uri``; remote objects are downloaded to a temp file.

    Media decoders (decord/ffmpeg) need a seekable local file. Raises FileNotFoundError for a
    missing object so callers can record it as a ``missing_file`` error.
    """
    if not is_s3(uri):
        path = local_path(uri)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such file: {path}")
        yield path
        return
    import boto3
    from botocore.exceptions import ClientError

    bucket, _, key = uri[len("s3://"):].partition("/")
    suffix = os.path.splitext(key)[1]
    fd, tmp = tempfile.mkstemp(suffix=suffix, prefix="avray-")
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                boto3.client("s3").download_fileobj(bucket, key, f)
            except ClientError as err:
                code = err.response.get("Error", {}).get("Code", "")
                if code in ("404", "NoSuchKey", "NotFound"):
                    raise FileNotFoundError(f"no such object: {uri}") from err
                raise
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)

