"""Serve a trained checkpoint behind an OpenAI-compatible chat API (Ray Serve).

    python -m pipelines.serve --config pipelines/configs/serve/cpu.yaml checkpoint=runs/x/model
    serve run pipelines.serve:build_app config=pipelines/configs/serve/cpu.yaml checkpoint=...
    serve deploy cluster/serve_config.yaml

    curl -s 127.0.0.1:8000/v1/chat/completions -H 'content-type: application/json' -d '{
      "model": "model", "messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "file:///data/clip.mp4"}},
        {"type": "text", "text": "What happens in the clip?"}]}]}'

Four deployments, each a thin shell around a plain class of ``serve_predictor``:

    ChatIngress (FastAPI: /v1/chat/completions, /v1/models, /healthz, /docs)
      ├─ Encoder (frozen encoders + feature LRU; GPU when present)
      │    └─ Decoder (policy checks, fetch, decode; CPU)
      └─ Generator (connector + LLM; @serve.batch dynamic batching; streaming)

``deployments.encoders_in_generator`` folds the Encoder into the Generator (three
deployments; the Generator calls the Decoder on a cache miss): one hop less per media
request, with the encoders scaling with the generators.

Media errors surface before a stream starts, so every bad request gets a 4xx JSON error.
"""

# No ``from __future__ import annotations`` here: Serve pickles the ingress class by value
# with only the globals its code names, so FastAPI could not resolve string annotations
# such as ``Request`` in the replica (they would turn into query parameters).
import asyncio
import dataclasses
import hmac
import json
import logging
import os
import threading
import time
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from av_model.configlib import load_config
from av_model.model import Generation
from pipelines import jobs, serve_http
from pipelines.serve_api import (ApiError, ChatCompletionRequest, MediaPart, completion_body,
                                 completion_id, models_body, timed_out)
from pipelines.serve_config import ServeConfig
from pipelines.serve_http import direct_url, free_direct_port, ray_env  # noqa: F401 (API)
from pipelines.serve_media import DecodedMedia
from pipelines.serve_predictor import (ChatGenerator, FeatureEncoder, Features, GenRequest,
                                       attach, media_resolver, model_config, plan, replica_setup)

log = logging.getLogger(__name__)
app = FastAPI(title="avray", description="OpenAI-compatible chat over video, audio and images",
              version="1")


def _body_limit() -> int:
    """This replica's request body cap: the app exists at import, the config arrives with
    the ChatIngress instance Serve runs it in."""
    return serve.get_replica_context().servable_object.max_body_bytes


serve_http.install(app, _body_limit)   # before @serve.ingress freezes a copy of the app


def _refusal(fn):
    """Run ``fn``; an ApiError comes back as a value. Client mistakes travel between
    replicas as results, not as exceptions that each replica would log as a crash."""
    try:
        return fn()
    except ApiError as err:
        return err


def _raise_if_refused(value):
    if isinstance(value, ApiError):
        raise value
    return value


def _api_key(cfg: ServeConfig) -> str:
    """The Bearer key from the file or env var the config names; empty = no auth."""
    if cfg.api_key_file:
        with open(cfg.api_key_file) as f:
            return f.read().strip()
    return os.environ.get(cfg.api_key_env, "").strip()


@serve.deployment(name="Decoder")
class DecoderDeployment:
    def __init__(self, cfg: ServeConfig):
        replica_setup(cfg)
        self.resolver = media_resolver(cfg, model_config(cfg))

    async def decode(self, part: MediaPart) -> DecodedMedia | ApiError:
        return await asyncio.to_thread(_refusal, lambda: self.resolver.decode(part))


class MediaFeatures:
    """Cache lookup, then decode on the Decoder deployment and encode here on a miss: what
    the Encoder deployment does, and what a generator does itself when
    ``deployments.encoders_in_generator`` saves the hop to a separate encoder."""

    def __init__(self, cfg: ServeConfig, decoder: DeploymentHandle):
        model_cfg = model_config(cfg)
        self.encoder = FeatureEncoder(cfg, model_cfg)
        self.resolver = media_resolver(cfg, model_cfg)  # cache keys only; Decoder decodes
        self.decoder = decoder

    async def features(self, part: MediaPart) -> Features | ApiError:
        key = await asyncio.to_thread(_refusal, lambda: self.resolver.cache_key(part))
        if isinstance(key, ApiError):
            return key
        hit = self.encoder.cached(key)
        if hit is not None:
            return hit
        media = await self.decoder.decode.remote(part)
        if isinstance(media, ApiError):
            return media
        return await asyncio.to_thread(self.encoder.encode, media, key)


@serve.deployment(name="Encoder")
class EncoderDeployment:
    def __init__(self, cfg: ServeConfig, decoder: DeploymentHandle):
        replica_setup(cfg)
        self.media = MediaFeatures(cfg, decoder)

    async def features(self, part: MediaPart) -> Features | ApiError:
        return await self.media.features(part)

    def stats(self) -> dict[str, int]:
        return self.media.encoder.stats()


# What the generator gets for a media slot: the Encoder's features (or its refusal), or
# the part itself when it holds the encoders.
MediaArg = Features | ApiError | MediaPart | None


@serve.deployment(name="Generator")
class GeneratorDeployment:
    def __init__(self, cfg: ServeConfig, decoder: DeploymentHandle | None = None):
        replica_setup(cfg)
        self.gen = ChatGenerator(cfg)
        self.media = MediaFeatures(cfg, decoder) if decoder is not None else None
        self.timeout_s = cfg.http.request_timeout_s
        self.unbatched = cfg.batching.max_batch_size == 1
        self.serial = asyncio.Lock()
        self._batch.set_max_batch_size(cfg.batching.max_batch_size)
        self._batch.set_batch_wait_timeout_s(cfg.batching.batch_wait_timeout_s)
        self.batches = self.requests = self.max_batch = 0   # counters, not a growing list

    async def _attach(self, req: GenRequest, visual: MediaArg, audio: MediaArg,
                      ) -> GenRequest | ApiError:
        if self.media is not None:  # encoders_in_generator: the parts came, not features
            async def one(p: MediaArg) -> MediaArg:
                return await self.media.features(p) if isinstance(p, MediaPart) else p

            visual, audio = await asyncio.gather(one(visual), one(audio))
        return attach(req, visual, audio)

    async def generate(self, req: GenRequest, visual: MediaArg = None,
                       audio: MediaArg = None) -> Generation | ApiError:
        req = await self._attach(req, visual, audio)
        if isinstance(req, ApiError):
            return req
        if self.unbatched:  # batching off: no batch queue, one generation at a time
            async with self.serial:
                return (await self._run([req]))[0]
        return await self._batch(req)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
    async def _batch(self, requests: list[GenRequest]) -> list:
        return await self._run(requests)

    async def _run(self, requests: list[GenRequest]) -> list:
        self.batches, self.requests = self.batches + 1, self.requests + len(requests)
        self.max_batch = max(self.max_batch, len(requests))
        return await asyncio.to_thread(self.gen.generate, requests)

    async def stream(self, req: GenRequest, visual: MediaArg = None,
                     audio: MediaArg = None) -> AsyncIterator:
        """Text deltas then the Generation; a refused request is the only item."""
        req = await self._attach(req, visual, audio)
        err = req if isinstance(req, ApiError) else self.gen.check(req)
        if err is not None:
            yield err
            return
        cancel = threading.Event()
        items = self.gen.stream(req, self.timeout_s, cancel)
        done = object()
        try:
            while (item := await asyncio.to_thread(next, items, done)) is not done:
                yield item
        finally:  # finished, failed, or cancelled because the client went away
            cancel.set()

    def stats(self) -> dict[str, Any]:
        """Batching counters, and the feature cache's when this replica holds the encoders."""
        cache = self.media.encoder.stats() if self.media is not None else {}
        return {"batches": self.batches, "requests": self.requests, "max_batch": self.max_batch,
                **cache}


@serve.deployment(name="ChatIngress")
@serve.ingress(app)
class ChatIngress:
    def __init__(self, cfg: ServeConfig, encoder: DeploymentHandle | None,
                 generator: DeploymentHandle):
        self.cfg, self.encoder, self.generator = cfg, encoder, generator
        self.name, self.created = cfg.served_name, int(time.time())
        self.api_key = _api_key(cfg)
        self.max_body_bytes = cfg.max_body_bytes   # read by serve_http.BodyLimit

    def _authorize(self, request: Request) -> None:
        if not self.api_key:
            return
        got = request.headers.get("authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {self.api_key}".encode()):
            raise ApiError(401, "missing or incorrect API key (Authorization: Bearer <key>)",
                           code="invalid_api_key")

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok", "model": self.name}

    @app.get("/v1/models")
    async def models(self, request: Request) -> dict:
        self._authorize(request)
        return models_body(self.name, self.created)

    @app.post("/v1/chat/completions")
    async def chat(self, body: ChatCompletionRequest, request: Request):
        self._authorize(request)
        if body.model != self.name:
            raise ApiError(404, f"the model {body.model!r} does not exist; this server has "
                                f"{self.name!r}", param="model", code="model_not_found")
        timeout = self.cfg.http.request_timeout_s
        # One deadline for the whole request: the 504 below, the generator's decoding (it
        # stops a request past it, GenRequest.deadline) and a stream's last event.
        deadline = time.time() + timeout
        try:
            return await asyncio.wait_for(self._chat(body, deadline), timeout)
        except asyncio.TimeoutError:
            raise timed_out(timeout) from None

    async def _chat(self, body: ChatCompletionRequest, deadline: float):
        conv, req = plan(body, self.cfg.generation)
        req = dataclasses.replace(req, deadline=deadline)
        # The encoder's responses go straight into the generator call: Serve hands the
        # features from replica to replica, not through this one. Without an Encoder
        # deployment the generator gets the parts and encodes them itself.
        media = [self.encoder.features.remote(p) if p and self.encoder else p
                 for p in (conv.visual, conv.audio)]
        if body.stream:
            return await self._stream(req, media, body)
        g = _raise_if_refused(await self.generator.generate.remote(req, *media))
        return completion_body(completion_id(), self.name, g.text, g.finish_reason,
                               g.prompt_tokens, g.completion_tokens)

    async def _stream(self, req: GenRequest, media: list, body: ChatCompletionRequest,
                      ) -> StreamingResponse:
        """Server-sent events in OpenAI's chunk format; the first item is awaited before the
        response starts, so a prompt the model refuses is still a plain 4xx."""
        gen = self.generator.options(stream=True).stream.remote(req, *media)
        first = _raise_if_refused(await gen.__anext__())
        events = serve_http.chat_events(
            first, gen, completion_id(), self.name, req.deadline,
            self.cfg.http.request_timeout_s,
            with_usage=bool(body.stream_options and body.stream_options.include_usage))
        return StreamingResponse(events, media_type="text/event-stream")


def app_for(cfg: ServeConfig):
    """The application graph for one config."""
    dep = cfg.deployments
    decoder = DecoderDeployment.options(**dep.decoder.options()).bind(cfg)
    if dep.encoders_in_generator:
        generator = GeneratorDeployment.options(**dep.generator.options()).bind(cfg, decoder)
        return ChatIngress.options(**dep.ingress.options()).bind(cfg, None, generator)
    encoder = EncoderDeployment.options(**dep.encoder.options()).bind(cfg, decoder)
    generator = GeneratorDeployment.options(**dep.generator.options()).bind(cfg)
    return ChatIngress.options(**dep.ingress.options()).bind(cfg, encoder, generator)


def _flatten(args: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in args.items():
        if isinstance(v, dict):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}={json.dumps(v) if not isinstance(v, str) else v}")
    return out


def serve_config_from_args(args: dict[str, Any]) -> ServeConfig:
    """Builder args (``config=`` a YAML, the rest dotted or nested overrides) → config."""
    args = dict(args)
    path = args.pop("config", None)
    if path and not os.path.exists(path):
        shipped = os.path.join(os.path.dirname(__file__), "configs", "serve", f"{path}.yaml")
        path = shipped if os.path.exists(shipped) else path
    return load_config(ServeConfig, path, _flatten(args))


def build_app(args: dict[str, Any]):
    """``serve run pipelines.serve:build_app config=x.yaml checkpoint=... http.port=8001``;
    also the import_path of ``cluster/serve_config.yaml`` (nested args allowed)."""
    return app_for(serve_config_from_args(args))


def start(cfg: ServeConfig) -> str:
    """Start Serve's HTTP proxy (loopback unless configured) and the app; returns its URL:
    the first ingress replica's own server with ``http.direct_port``, else the proxy's."""
    preflight(cfg)
    # Our own per-request timeout answers first with an OpenAI error; the proxy's is a backstop.
    serve.start(http_options={"host": cfg.http.host, "port": cfg.http.port,
                              "request_timeout_s": cfg.http.request_timeout_s + 10})
    serve.run(app_for(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix)
    prefix = cfg.route_prefix.rstrip("/")
    if cfg.http.direct_port is None:
        return f"http://{cfg.http.host}:{cfg.http.port}{prefix}"
    return direct_url(cfg, prefix)


def preflight(cfg: ServeConfig) -> None:
    """What can be checked before Ray starts: a local checkpoint is an avray checkpoint and
    the media root exists (s3:// and models:/ are resolved by the replicas)."""
    from av_model.configlib import check
    from pipelines.checkpoints import check_reference

    check_reference(cfg.checkpoint)
    root = cfg.media.allowed_root
    check(root is None or os.path.isdir(root), "media.allowed_root", f"no directory {root}")


def main(argv: list[str] | None = None) -> None:
    cfg = jobs.parse_job_config(ServeConfig, argv, __doc__)
    jobs.checked(preflight, cfg)
    env = ray_env(cfg)
    if env and jobs.starts_private_ray(cfg.ray):
        # No load balancer in front of a Ray of our own: Ctrl-C need not wait out the
        # ingress drain period (30 s by default) that gives one time to deregister.
        env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "1"
    with jobs.ray_session(cfg.ray, env=env):
        url = start(cfg)
        log.info("serving %s at %s/v1 (Ctrl-C stops)", cfg.served_name, url)
        jobs.wait_for_interrupt()
        serve.shutdown()


if __name__ == "__main__":
    main()
