"""Media named by a chat request: policy checks, fetching, decoding, cache keys.

Why apart from ``media.py``: ingest trusts its manifest, a server trusts nothing. Here a
``file://`` URL must resolve (symlinks followed) inside the configured root, ``s3://`` must be
enabled, a ``data:`` payload and a fetched object have size limits, and media longer than the
limit is refused rather than cut. Decoding itself is ``media.decode_file``, the function ingest
uses, so a served clip gives the features training saw.

Every refusal is an ``ApiError`` (400, naming the request field) so no input reaches a replica
as an unhandled exception.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import os
import tempfile
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import unquote, urlparse

import numpy as np

from pipelines import storage
from pipelines.media import DecodeConfig, MediaError, decode_file
from pipelines.serve_api import ApiError, MediaPart
from pipelines.serve_config import MediaPolicy


def sniff(head: bytes) -> str | None:
    """The container family of a file's first bytes, or None when it is not one we decode.

    Why a whitelist: ffmpeg (inside decord) detects formats by content, and a playlist
    (HLS ``#EXTM3U``, ``ffconcat``) would make it open local files the playlist names,
    outside the allowed root. Only self-contained media containers get to the decoder.
    """
    if len(head) >= 8 and head[4:8] == b"ftyp":
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head.startswith(b"RIFF") and head[8:12] in (b"WAVE", b"AVI ", b"WEBP"):
        return {b"WAVE": "wav", b"AVI ": "avi", b"WEBP": "webp"}[head[8:12]]
    for magic, name in ((b"OggS", "ogg"), (b"fLaC", "flac"), (b"ID3", "mp3"), (b"FLV", "flv"),
                        (b"\x89PNG", "png"), (b"\xff\xd8\xff", "jpeg"), (b"GIF8", "gif"),
                        (b"BM", "bmp")):
        if head.startswith(magic):
            return name
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "mpeg-audio"   # MP3 / ADTS AAC frame sync
    if len(head) >= 189 and head[0] == 0x47 and head[188] == 0x47:
        return "mpegts"
    return None


IMAGE_FORMATS = ("png", "jpeg", "gif", "bmp", "webp")
MAX_IMAGE_PIXELS = 40_000_000


@dataclass
class DecodedMedia:
    frames: np.ndarray | None   # (T, S, S, 3) uint8; (1, S, S, 3) for an image
    audio: np.ndarray | None    # (N,) float32 at 16 kHz


class MediaResolver:
    """Checks, fetches and decodes the media parts of requests under one policy."""

    def __init__(self, policy: MediaPolicy, decode: DecodeConfig):
        self.policy = policy
        self.decode_cfg = DecodeConfig(fps=decode.fps, frame_size=decode.frame_size,
                                       resize=decode.resize, max_duration_s=policy.max_video_s,
                                       threads=decode.threads)
        self.root = os.path.realpath(policy.allowed_root) if policy.allowed_root else None

    # ------------------------------------------------------------------ locations

    def _scheme(self, part: MediaPart) -> str:
        try:
            part.url.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, "URL is not valid UTF-8", param=part.param,
                           code="bad_url") from None
        if "\x00" in unquote(part.url[:4096]):
            raise ApiError(400, "URL contains a NUL character", param=part.param,
                           code="bad_url")
        scheme = part.url.split(":", 1)[0].lower() if ":" in part.url else ""
        if scheme == "file" and self.root is None:
            raise ApiError(400, "file:// URLs are disabled on this server", param=part.param,
                           code="url_not_allowed")
        if scheme == "s3" and not self.policy.allow_s3:
            raise ApiError(400, "s3:// URLs are disabled on this server", param=part.param,
                           code="url_not_allowed")
        if scheme not in ("file", "s3", "data"):
            raise ApiError(400, f"unsupported URL scheme {scheme or '(none)'!r}; use file://, "
                                "s3:// or data:", param=part.param, code="unsupported_url")
        return scheme

    def _file_path(self, part: MediaPart) -> str:
        parsed = urlparse(part.url)
        if parsed.netloc not in ("", "localhost"):
            raise ApiError(400, "file:// URLs must name a local path", param=part.param,
                           code="url_not_allowed")
        real = os.path.realpath(unquote(parsed.path))
        if os.path.commonpath([self.root, real]) != self.root:
            raise ApiError(400, "file:// path is outside the server's allowed media root",
                           param=part.param, code="url_not_allowed")
        if not os.path.isfile(real):
            raise ApiError(400, "no such media file", param=part.param, code="media_not_found")
        if os.path.getsize(real) > self.policy.max_fetch_bytes:
            raise ApiError(400, f"media file is over {self.policy.max_fetch_bytes} bytes",
                           param=part.param, code="media_too_large")
        return real

    def _s3_allowed(self, part: MediaPart) -> None:
        """Under a configured prefix, compared on whole path segments; '.' and '..' segments
        are refused outright (S3 keys are literal, but a proxy or SDK may normalise them)."""
        bucket_key = part.url[5:]
        segments = bucket_key.split("/")
        if not segments[0] or any(s in (".", "..") for s in segments):
            raise ApiError(400, "malformed s3:// URL", param=part.param, code="bad_url")
        prefixes = self.policy.s3_prefixes
        if prefixes and not any(bucket_key == p[5:].rstrip("/") or
                                bucket_key.startswith(p[5:].rstrip("/") + "/") for p in prefixes):
            raise ApiError(400, "s3:// object is outside the server's allowed prefixes",
                           param=part.param, code="url_not_allowed")

    def _s3_info(self, part: MediaPart):
        import pyarrow.fs as pafs

        self._s3_allowed(part)
        fs, path = storage.filesystem(part.url)
        try:
            info = fs.get_file_info(path)
        except Exception as err:  # OSError, ArrowInvalid for a malformed bucket/key
            raise ApiError(400, f"cannot reach {part.url}: {err}", param=part.param,
                           code="media_fetch_failed") from None
        if info.type != pafs.FileType.File:
            raise ApiError(400, "no such media object", param=part.param,
                           code="media_not_found")
        if info.size > self.policy.max_fetch_bytes:
            raise ApiError(400, f"media object is over {self.policy.max_fetch_bytes} bytes",
                           param=part.param, code="media_too_large")
        return info

    def _data(self, part: MediaPart) -> tuple[str, bytes]:
        """(mime type, payload) of a ``data:[type];base64,...`` URL, size-checked first."""
        head, sep, payload = part.url[len("data:"):].partition(",")
        if not sep or not head.endswith(";base64"):
            raise ApiError(400, "data: URLs must be base64 (data:<type>;base64,<payload>)",
                           param=part.param, code="bad_data_url")
        if len(payload) * 3 // 4 > self.policy.max_data_bytes:
            raise ApiError(400, f"data: payload is over {self.policy.max_data_bytes} bytes",
                           param=part.param, code="media_too_large")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "data: payload is not valid base64", param=part.param,
                           code="bad_base64") from None
        if not data:
            raise ApiError(400, "data: payload is empty", param=part.param, code="bad_data_url")
        return head[:-len(";base64")], data

    def cache_key(self, part: MediaPart) -> str:
        """Same media → same key: content hash for data:, identity + size + mtime otherwise
        (a file replaced in place gets a new key)."""
        scheme = self._scheme(part)
        if scheme == "data":
            digest = hashlib.sha256(part.url.encode()).hexdigest()
            return f"{part.kind}:data:{digest}"
        if scheme == "file":
            path = self._file_path(part)
            st = os.stat(path)
            return f"{part.kind}:file:{path}:{st.st_size}:{st.st_mtime_ns}"
        info = self._s3_info(part)
        return f"{part.kind}:{part.url}:{info.size}:{info.mtime_ns}"

    @contextlib.contextmanager
    def _fetched(self, part: MediaPart) -> Iterator[str]:
        """An s3:// object in a temp file; storage errors are the client's 400s."""
        try:
            cm = storage.local_copy(part.url)
            path = cm.__enter__()
        except FileNotFoundError:
            raise ApiError(400, "no such media object", param=part.param,
                           code="media_not_found") from None
        except Exception as err:  # access denied, bad bucket name, ...
            raise ApiError(400, f"cannot fetch {part.url}: {type(err).__name__}",
                           param=part.param, code="media_fetch_failed") from None
        try:
            yield path
        finally:
            cm.__exit__(None, None, None)

    @contextlib.contextmanager
    def local_file(self, part: MediaPart) -> Iterator[str]:
        """A local path holding the part's bytes (temp files for data: and s3://)."""
        scheme = self._scheme(part)
        if scheme == "file":
            yield self._file_path(part)
            return
        if scheme == "s3":
            self._s3_info(part)
            with self._fetched(part) as path:
                yield path
            return
        _, data = self._data(part)
        with tempfile.NamedTemporaryFile(prefix="avray-media-") as f:
            f.write(data)
            f.flush()
            yield f.name

    # ------------------------------------------------------------------ decoding

    def _check_format(self, path: str, part: MediaPart) -> None:
        with open(path, "rb") as f:
            head = f.read(256)
        if not head:
            raise ApiError(400, f"{part.kind} is empty", param=part.param, code="empty_file")
        kind = sniff(head)
        if kind is None or (part.kind == "image") != (kind in IMAGE_FORMATS):
            raise ApiError(400, f"not a supported {part.kind} format", param=part.param,
                           code="corrupt_or_unsupported")

    def decode(self, part: MediaPart) -> DecodedMedia:
        """Frames and/or 16 kHz audio of one part; ApiError for anything unusable."""
        with self.local_file(part) as path:
            self._check_format(path, part)
            if part.kind == "image":
                return DecodedMedia(self._image(path, part), None)
            try:
                clip = decode_file(path, self.decode_cfg)
            except MediaError as err:
                raise ApiError(400, f"cannot decode {part.kind}: {err}", param=part.param,
                               code=err.code) from None
            except Exception as err:  # decord raises its own errors on odd files
                raise ApiError(400, f"cannot decode {part.kind}: {type(err).__name__}",
                               param=part.param, code="corrupt_or_unsupported") from None
        if clip.truncated:
            raise ApiError(400, f"{part.kind} is longer than the server's limit of "
                                f"{self.policy.max_video_s} s", param=part.param,
                           code="media_too_long")
        if part.kind == "audio":
            if clip.audio is None:
                raise ApiError(400, "audio part has no audio stream", param=part.param,
                               code="no_audio")
            return DecodedMedia(None, clip.audio)
        if clip.frames is None:
            raise ApiError(400, "video part has no video stream", param=part.param,
                           code="no_video")
        if len(clip.frames) > self.policy.max_frames:
            raise ApiError(400, f"video gives {len(clip.frames)} frames, over the limit of "
                                f"{self.policy.max_frames}", param=part.param,
                           code="media_too_long")
        return DecodedMedia(clip.frames, clip.audio)

    def _image(self, path: str, part: MediaPart) -> np.ndarray:
        """One RGB still → (1, S, S, 3) uint8, resized like video frames."""
        from PIL import Image

        size = self.decode_cfg.frame_size
        try:
            with open(path, "rb") as f:
                img = Image.open(io.BytesIO(f.read()),
                                 formats=[f.upper() for f in IMAGE_FORMATS])
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise ApiError(400, f"image is {img.width}x{img.height}, over "
                                        f"{MAX_IMAGE_PIXELS} pixels", param=part.param,
                                   code="media_too_large")
                img = img.convert("RGB")
        except ApiError:
            raise
        except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, ...
            raise ApiError(400, f"cannot decode image: {type(err).__name__}: {err}"[:300],
                           param=part.param, code="corrupt_or_unsupported") from None
        if self.decode_cfg.resize == "crop":
            scale = size / min(img.size)
            img = img.resize((max(size, round(img.width * scale)),
                              max(size, round(img.height * scale))), Image.BICUBIC)
            left, top = (img.width - size) // 2, (img.height - size) // 2
            img = img.crop((left, top, left + size, top + size))
        else:
            img = img.resize((size, size), Image.BICUBIC)
        return np.asarray(img, dtype=np.uint8)[None]   # (S, S, 3) → (1, S, S, 3)
