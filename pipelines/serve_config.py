"""The serving job's config: which checkpoint, the media policy, batching, deployments, HTTP.

Every field is checked when the config is loaded, before Ray or a model starts. Secrets are
not config: the API key is read from the environment variable ``api_key_env`` names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from av_model.configlib import ConfigError, check
from pipelines.jobs import RayConfig

MiB = 1 << 20
DIRECT_PORTS = 64   # direct-ingress ports per node, from http.direct_port up


@dataclass(frozen=True)
class MediaPolicy:
    """What media a request may name, and how much of it."""

    # file:// URLs must resolve (symlinks followed) inside this directory; null disables them.
    allowed_root: str | None = None
    allow_s3: bool = False             # s3:// URLs (credentials from the replica's env)
    # With allow_s3: only objects under these prefixes (e.g. s3://bucket/media/); empty =
    # anything the replica's credentials can read, which may be more than the media.
    s3_prefixes: list[str] = field(default_factory=list)
    max_data_bytes: int = 32 * MiB     # one decoded data: payload
    max_fetch_bytes: int = 512 * MiB   # one file:// or s3:// object
    max_video_s: float = 300.0         # longer media is refused (400), never cut silently
    max_frames: int = 600              # frames after sampling at the model's fps

    def __post_init__(self) -> None:
        for name in ("max_data_bytes", "max_fetch_bytes", "max_frames"):
            check(getattr(self, name) > 0, name, "must be > 0")
        bad = [p for p in self.s3_prefixes
               if not p.startswith("s3://") or not p[5:].split("/", 1)[0]]
        check(not bad, "s3_prefixes", f"each must be s3://BUCKET[/PREFIX], got {bad}")
        check(self.allow_s3 or not self.s3_prefixes, "s3_prefixes",
              "has no effect while allow_s3 is false")
        check(self.max_video_s > 0, "max_video_s", "must be > 0")


@dataclass(frozen=True)
class BatchingConfig:
    """Dynamic batching of generation (``@serve.batch``); max_batch_size 1 turns it off."""

    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.02   # how long the first request waits for company

    def __post_init__(self) -> None:
        check(self.max_batch_size >= 1, "max_batch_size", "must be >= 1")
        check(self.batch_wait_timeout_s >= 0, "batch_wait_timeout_s", "must be >= 0")


@dataclass(frozen=True)
class DeploymentConfig:
    """Replicas and resources of one deployment."""

    num_replicas: int = 1
    # Ray Serve's autoscaling_config (min_replicas, max_replicas, target_ongoing_requests,
    # ...); when set it replaces num_replicas.
    autoscaling: dict[str, Any] | None = None
    num_cpus: float = 0.25   # fractional: whole CPUs per replica starve a small host
    num_gpus: float = 0.0
    max_ongoing_requests: int = 64

    def __post_init__(self) -> None:
        check(self.num_replicas >= 1, "num_replicas", "must be >= 1")
        check(self.num_cpus >= 0 and self.num_gpus >= 0, "num_cpus", "resources must be >= 0")
        check(self.max_ongoing_requests >= 1, "max_ongoing_requests", "must be >= 1")
        if self.autoscaling is not None:
            from ray.serve.config import AutoscalingConfig

            unknown = set(self.autoscaling) - set(AutoscalingConfig.model_fields)
            check(not unknown, "autoscaling", f"unknown keys {sorted(unknown)}; Ray Serve's "
                  f"autoscaling_config takes {sorted(AutoscalingConfig.model_fields)}")
            try:
                AutoscalingConfig(**self.autoscaling)
            except Exception as err:  # pydantic's ValidationError names the bad key
                raise ConfigError("autoscaling", str(err).splitlines()[-1]
                                  if str(err) else type(err).__name__) from None

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options``."""
        opts: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "max_ongoing_requests": self.max_ongoing_requests}
        if self.autoscaling is not None:
            opts["autoscaling_config"] = dict(self.autoscaling)
            opts["num_replicas"] = "auto"
        else:
            opts["num_replicas"] = self.num_replicas
        return opts


@dataclass(frozen=True)
class DeploymentsConfig:
    """Ingress (HTTP), media fetch + decode (CPU), encoders (GPU when present), generation."""

    ingress: DeploymentConfig = DeploymentConfig()
    decoder: DeploymentConfig = DeploymentConfig()
    encoder: DeploymentConfig = DeploymentConfig()
    generator: DeploymentConfig = DeploymentConfig(max_ongoing_requests=128)
    # The generator replicas hold the frozen encoders and the feature cache themselves
    # (``encoder`` above is then unused): one deployment hop less per media request,
    # which is most of Serve's cost for a small model. Keep false when encoders should
    # scale apart from the LLM (their own GPUs); each generator replica caches apart.
    encoders_in_generator: bool = False


@dataclass(frozen=True)
class HttpConfig:
    """Where the HTTP proxy listens; loopback unless you say otherwise.

    ``direct_port`` turns on Ray Serve's throughput-optimized mode, for when latency matters:
    on a small model the proxy hop and Serve's per-replica threads cost more than the forward
    pass (benchmarks/RESULTS.md). User code runs on the replica's own event loop, and each
    ingress replica serves HTTP itself (direct ingress) on the first free port from
    ``direct_port`` up, at ``host``. The proxy on ``port`` stays as a fallback. These are
    Ray-wide settings read when Ray's processes start: a Ray that the job starts gets them
    from :func:`pipelines.serve_http.ray_env`; a cluster needs them in its nodes' environment
    (cluster/serve_config.yaml says which). Keep the range clear of Ray's worker ports
    (``ray start --min-worker-port``, 10002..19999 by default).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    request_timeout_s: float = 300.0   # one chat completion, end to end (504 after)
    direct_port: int | None = None     # first direct-ingress port; None = proxy only
    # Request bodies over this many bytes get a 413 before they are parsed; None = room
    # for a visual and an audio data: payload at media.max_data_bytes, plus 1 MiB.
    max_body_bytes: int | None = None

    def __post_init__(self) -> None:
        check(0 <= self.port < 65536, "port", "must be in 0..65535")
        check(self.request_timeout_s > 0, "request_timeout_s", "must be > 0")
        check(self.max_body_bytes is None or self.max_body_bytes > 0, "max_body_bytes",
              "must be > 0 (or null for the default)")
        if self.direct_port is not None:
            check(1024 <= self.direct_port <= 65535 - DIRECT_PORTS, "direct_port",
                  f"must be in 1024..{65535 - DIRECT_PORTS}")
            last = self.direct_port + DIRECT_PORTS - 1
            check(not self.direct_port <= self.port <= last, "direct_port",
                  f"its range {self.direct_port}..{last} holds the proxy's port {self.port}")


@dataclass(frozen=True)
class GenerationDefaults:
    """What a request gets when it does not say, and what it may ask for."""

    max_tokens: int = 128          # default completion length
    max_tokens_limit: int = 1024   # a request asking for more gets a 400
    temperature: float = 1.0       # OpenAI's default; 0 means greedy

    def __post_init__(self) -> None:
        check(0 < self.max_tokens <= self.max_tokens_limit, "max_tokens",
              "must be in 1..max_tokens_limit")
        check(self.temperature >= 0, "temperature", "must be >= 0")


@dataclass(frozen=True)
class ServeConfig:
    """``python -m pipelines.serve --config ...`` / ``serve run pipelines.serve:build_app``."""

    checkpoint: str = ""          # a checkpoint directory, s3:// prefix, or models:/NAME/VERSION
    model_name: str = ""          # the id in /v1/models and responses ("" = from checkpoint)
    tracking_uri: str | None = None  # MLflow server for models:/ URIs (default: env's)
    # The Bearer key clients must send: read from this file (a mounted secret) when set,
    # else from the env var api_key_env names; neither set or empty = no auth.
    api_key_file: str | None = None
    api_key_env: str = "AVRAY_API_KEY"
    device: Literal["auto", "cpu", "cuda"] = "auto"   # auto = cuda when the replica has a GPU
    torch_threads: int = 1        # per replica: keep replicas from oversubscribing cores
    feature_cache_items: int = 256  # encoded media kept per encoder replica (LRU)
    # Fold a LoRA checkpoint's adapters into the base weights at load: the same outputs
    # (within rounding) without two extra matrix products per adapted projection and token.
    merge_lora: bool = True
    generation: GenerationDefaults = GenerationDefaults()
    media: MediaPolicy = MediaPolicy()
    batching: BatchingConfig = BatchingConfig()
    deployments: DeploymentsConfig = DeploymentsConfig()
    http: HttpConfig = HttpConfig()
    ray: RayConfig = field(default_factory=RayConfig)
    app_name: str = "avray"
    route_prefix: str = "/"

    def __post_init__(self) -> None:
        check(bool(self.checkpoint), "checkpoint", "is required (a directory, s3:// or models:/)")
        check(self.torch_threads >= 1, "torch_threads", "must be >= 1")
        check(self.feature_cache_items >= 0, "feature_cache_items", "must be >= 0")

    @property
    def max_body_bytes(self) -> int:
        """The request body cap: ``http.max_body_bytes``, else what a request at the media
        limits needs: a conversation carries at most two media parts, and a ``data:``
        payload of ``media.max_data_bytes`` is 4 base64 characters per 3 bytes in the JSON."""
        if self.http.max_body_bytes is not None:
            return self.http.max_body_bytes
        return 2 * 4 * ((self.media.max_data_bytes + 2) // 3) + MiB

    @property
    def served_name(self) -> str:
        """The model id clients see: configured, else the checkpoint's last path part(s)."""
        if self.model_name:
            return self.model_name
        ref = self.checkpoint.rstrip("/")
        if ref.startswith("models:/"):
            return ref[len("models:/"):]
        return ref.rsplit("/", 1)[-1] or ref
