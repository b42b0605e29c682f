"""How the serving ingress meets HTTP: OpenAI-shaped errors for every failure, a cap on
request bodies, chat streams as server-sent events (with the request's deadline), and the
ports of Ray Serve's direct-ingress mode.

Why apart from ``serve.py``: the error handlers and the body cap are plain FastAPI / ASGI
pieces, tested over real HTTP without Ray (tests/pipelines/test_serve_units.py).

Every error is OpenAI's ``{"error": {message, type, param, code}}``: a refusal
(``ApiError``) or a schema error is a 4xx naming the field, an unknown route or method
Starlette's 404 / 405, a body over the cap a 413, and an exception a handler lets through
(an encoder raising, a Ray error) a 500 ``server_error``. The 500's message names only the
exception's type: its text may hold a remote traceback (Ray's errors do), which goes to
the replica's log instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipelines.serve_api import ApiError, chunk_body, timed_out, usage
from pipelines.serve_config import DIRECT_PORTS, ServeConfig

log = logging.getLogger(__name__)
_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def install(app: FastAPI, body_limit: Callable[[], int]) -> None:
    """OpenAI-shaped errors for everything ``app`` answers, and a cap of ``body_limit()``
    bytes on request bodies (a callable: a module-level app exists before any config)."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_middleware(BodyLimit, limit=body_limit)
    app.add_middleware(ServerErrors)   # added last = outermost: sees what the rest lets by


def error_response(err: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


async def _api_error(_: Request, err: ApiError) -> JSONResponse:
    return error_response(err)


async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
    first = err.errors()[0] if err.errors() else {}
    if first.get("type") == "json_invalid":  # its loc is a character offset, not a field
        where = first.get("loc", ())[-1] if first.get("loc") else "?"
        why = (first.get("ctx") or {}).get("error", "JSON decode error")
        return error_response(ApiError(400, f"request body is not valid JSON: {why} at "
                                            f"character {where}", code="json_invalid"))
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    msg = first.get("msg", "invalid request")
    return error_response(ApiError(400, f"{loc or 'request body'}: {msg}", param=loc or None,
                                   code=first.get("type")))


async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    """Starlette's own errors (unknown route, wrong method, ...), headers such as 405's
    ``Allow`` kept."""
    status = err.status_code
    message = str(err.detail)
    if status in (404, 405):
        message = f"{message}: {request.method} {request.url.path}"
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return error_response(ApiError(status, message, type=kind, code=_CODES.get(status)),
                          headers=err.headers)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body is over the server's limit of {limit} bytes",
                    code=_CODES[413])


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, _too_large(limit).message)


class BodyLimit:
    """Refuse a request body over ``limit()`` bytes before it is parsed: by its
    Content-Length before reading any of it, else as it streams in (a chunked upload), so
    an oversized JSON is never held whole.

    The streamed case raises ``BodyTooLarge`` (an HTTPException) from ``receive``: FastAPI
    passes HTTPExceptions from its body reading on to the handlers, which answer 413."""

    def __init__(self, app: ASGIApp, limit: Callable[[], int]):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await error_response(_too_large(limit))(scope, receive, send)
            return
        received = 0

        async def capped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, capped, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class ServerErrors:
    """An exception no handler took becomes a 500 ``server_error`` in OpenAI's shape (not
    Starlette's plain-text 500), logged with its traceback. A response already under way (a
    stream reports its own failures in-band) is left for the server to cut."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as err:  # noqa: BLE001 - the client gets JSON, the log the trace
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if started:
                raise
            await error_response(ApiError(
                500, f"the server failed on this request ({type(err).__name__})",
                type="server_error", code="internal_error"))(scope, receive, send)


async def chat_events(first: Any, rest: Any, cid: str, model: str, deadline: float | None,
                      timeout_s: float, with_usage: bool = False) -> AsyncIterator[str]:
    """A chat stream as server-sent events in OpenAI's chunk format: the role, a chunk per
    text delta, the finish reason, the usage (``with_usage``), then ``[DONE]``.

    ``first`` is the generator's first item (awaited before the response started), ``rest``
    its async iterator of further deltas then the final ``Generation``. The headers are sent
    by now, so a failure, or the request's ``deadline`` passing mid-stream, is reported
    in-band as an OpenAI error event; whatever did not finish cancels ``rest`` (the
    generator stops decoding)."""
    def sse(obj: dict) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    finished = False
    try:
        yield sse(chunk_body(cid, model, {"role": "assistant", "content": ""}))
        item = first
        while isinstance(item, str):
            yield sse(chunk_body(cid, model, {"content": item}))
            left = None if deadline is None else max(0.0, deadline - time.time())
            item = await asyncio.wait_for(rest.__anext__(), left)
        if isinstance(item, ApiError):            # the generator stopped it (its deadline)
            yield sse(item.body())
        else:
            yield sse(chunk_body(cid, model, {}, finish_reason=item.finish_reason))
            if with_usage:
                yield sse(chunk_body(cid, model, {}, usage_counts=usage(
                    item.prompt_tokens, item.completion_tokens)))
            finished = True
    except Exception as err:  # noqa: BLE001 - headers are sent: report in-band
        # Our deadline, or a TimeoutError of the stream's own (Ray's, say): a failure.
        if isinstance(err, asyncio.TimeoutError) and deadline and time.time() >= deadline:
            yield sse(timed_out(timeout_s).body())
        else:
            log.exception("stream %s failed", cid)
            yield sse(ApiError(500, f"generation failed: {type(err).__name__}",
                               type="server_error", code="generation_failed").body())
    finally:
        if not finished:
            rest.cancel()  # the client went away, or time ran out: stop decoding
    yield "data: [DONE]\n\n"


# ----------------------------------------------------------------------------- direct ingress

def ray_env(cfg: ServeConfig) -> dict[str, str]:
    """The environment Ray's processes need for ``http.direct_port`` (Ray Serve's
    throughput-optimized mode with direct ingress from that port); empty without it.

    The mode's gRPC between replicas stays off: Serve caps a replica's gRPC messages at
    4 MiB, less than a decoded clip of ~13 s (uint8 frames) or a large ``data:`` payload,
    and whether a handle uses it is fixed where the app is built (the driver here, the
    cluster under ``serve deploy``). Ray's actor calls carry any size through the object
    store."""
    if cfg.http.direct_port is None:
        return {}
    first = cfg.http.direct_port
    return {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            "RAY_SERVE_USE_GRPC_BY_DEFAULT": "0",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(first),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(first + DIRECT_PORTS)}


def free_direct_port(proxy_port: int) -> int:
    """A free first direct-ingress port that ``HttpConfig`` accepts beside ``proxy_port``
    (tests, benchmarks and demos on one machine)."""
    from av_model.configlib import ConfigError
    from pipelines import jobs
    from pipelines.serve_config import HttpConfig

    while True:
        port = jobs.free_port()
        try:
            HttpConfig(port=proxy_port, direct_port=port)
            return port
        except ConfigError:
            continue


def direct_url(cfg: ServeConfig, prefix: str, wait_s: float = 30.0) -> str:
    """The first direct-ingress URL of the app, once its /healthz answers.

    The port comes from Serve's controller (its target groups: what a load balancer in
    front of direct ingress reads): a redeployed app's replica takes the next port while
    the old one is quarantined. No replica target means Ray's processes started without
    ``ray_env(cfg)`` (a cluster's nodes need it)."""
    import urllib.request

    import ray
    from ray.serve.context import _get_global_client

    first, last = cfg.http.direct_port, cfg.http.direct_port + DIRECT_PORTS
    controller = _get_global_client()._controller
    deadline = time.monotonic() + wait_s
    while True:
        groups = ray.get(controller.get_target_groups.remote(cfg.app_name))
        # Replicas, not the proxy (the targets until the replicas run); a replica on
        # another node is reached at its node's address when the servers bind all of them.
        targets = sorted((t.port, t.ip) for g in groups
                         if getattr(g.protocol, "value", g.protocol) == "HTTP"
                         for t in g.targets if t.port != cfg.http.port)
        url = None
        if targets:
            port, ip = targets[0]
            host = ip if cfg.http.host in ("0.0.0.0", "::") else cfg.http.host
            url = f"http://{host}:{port}{prefix}"
        try:
            if url:
                with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
                    if json.load(r).get("model") == cfg.served_name:
                        return url
        except (OSError, ValueError):  # not up yet, or something else answers there
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"http.direct_port: the app {cfg.app_name!r} has no direct-ingress server "
                f"answering in {first}..{last - 1}; Ray's processes must start with "
                f"{sorted(ray_env(cfg))} set (a Ray that `python -m pipelines.serve` starts "
                "gets them; a cluster's nodes need them)")
        time.sleep(0.5)
