"""The plain predictor classes behind serving (and evaluation): no Ray Serve in here.

Why plain classes: each deployment in ``serve.py`` is a thin shell around one of these, the
in-process ``AVPredictor`` chains them for evaluation and for the Serve-overhead benchmark,
and the tests drive them without HTTP.

    MediaResolver (serve_media)  fetch + decode, CPU
    FeatureEncoder               frozen encoders + LRU of encoded media, GPU when present
    ChatGenerator                connector + LLM generation, batched or streamed
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor
from jinja2 import TemplateError
from transformers import StoppingCriteria, TextIteratorStreamer

from av_model import checkpoint as av_checkpoint
from av_model.config import ModelConfig
from av_model.encoders.bundle import AVEncoders
from av_model.encoders.common import default_device
from av_model.encoders.visual import visual_input_spec
from av_model.llm import merge_lora
from av_model.model import (AVModel, FeatureCache, GenerateOptions, Generation, Sample,
                            cut_at_stop)
from pipelines.checkpoints import local_checkpoint, local_config
from pipelines.media import DecodeConfig
from pipelines.serve_api import (ApiError, ChatCompletionRequest, Conversation, MediaPart,
                                 check_supported, completion_body, completion_id, stop_strings,
                                 timed_out, to_conversation)
from pipelines.serve_config import GenerationDefaults, ServeConfig
from pipelines.serve_media import DecodedMedia, MediaResolver

log = logging.getLogger(__name__)
Features = tuple[Tensor | None, Tensor | None]   # video (T, Nv, Dv), audio (A, Da)


@dataclass
class GenRequest:
    """What generation needs for one chat request (features already computed)."""

    turns: list[dict[str, str]]
    video: Tensor | None
    audio: Tensor | None
    image: bool
    options: GenerateOptions
    # Wall-clock time (time.time()) after which decoding stops: the client has had its 504,
    # or its stream's timeout error, so the replica's time goes to the other requests.
    deadline: float | None = None


def pick_device(setting: str) -> str:
    if setting == "auto":
        return str(default_device())
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but this replica sees no GPU (give it num_gpus)")
    return setting


def replica_setup(cfg: ServeConfig) -> None:
    """Per-process thread cap: replicas sharing a host must not oversubscribe its cores."""
    torch.set_num_threads(cfg.torch_threads)


@contextlib.contextmanager
def checkpoint_dir(cfg: ServeConfig) -> Iterator[str]:
    with local_checkpoint(cfg.checkpoint, cfg.tracking_uri) as path:
        yield path


def model_config(cfg: ServeConfig) -> ModelConfig:
    """The checkpoint's model config, fetching ``avray.yaml`` alone from a remote checkpoint:
    decoder and encoder replicas (autoscaled, many) need no LLM weights."""
    with local_config(cfg.checkpoint, cfg.tracking_uri) as path:
        return av_checkpoint.load_model_config(path)


def media_resolver(cfg: ServeConfig, model_cfg: ModelConfig) -> MediaResolver:
    """Decoding as the model's encoders expect it (fps, frame size, resize)."""
    enc = model_cfg.encoders
    size = visual_input_spec(enc.visual).image_size
    return MediaResolver(cfg.media, DecodeConfig(fps=enc.fps, frame_size=size,
                                                 resize=enc.resize))


def generate_options(req: ChatCompletionRequest, defaults: GenerationDefaults
                     ) -> GenerateOptions:
    """OpenAI sampling fields → our decoding options (temperature 0 = greedy)."""
    max_tokens = req.max_completion_tokens or req.max_tokens or defaults.max_tokens
    if max_tokens > defaults.max_tokens_limit:
        raise ApiError(400, f"max_tokens may be at most {defaults.max_tokens_limit}",
                       param="max_tokens")
    temperature = defaults.temperature if req.temperature is None else req.temperature
    top_p = 1.0 if req.top_p is None else req.top_p
    sample = temperature >= 1e-5   # below that, logits / temperature overflow: greedy
    return GenerateOptions(max_new_tokens=max_tokens, do_sample=sample,
                           temperature=temperature if sample else 1.0,
                           top_p=top_p if sample else 1.0, stop=stop_strings(req))


def plan(req: ChatCompletionRequest, defaults: GenerationDefaults,
         ) -> tuple[Conversation, GenRequest]:
    """A validated request → its conversation (media parts to encode) and the generation
    request, its features still to be attached. Every check that needs no media runs here,
    before any decoding."""
    check_supported(req)
    conv = to_conversation(req)
    image = conv.visual is not None and conv.visual.kind == "image"
    return conv, GenRequest(conv.turns, None, None, image, generate_options(req, defaults))


def attach(req: GenRequest, visual: Features | ApiError | None,
           audio: Features | ApiError | None) -> GenRequest | ApiError:
    """Put the encoded media on the request (an audio part replaces a video's own track);
    a refusal from media handling passes through."""
    for feats in (visual, audio):
        if isinstance(feats, ApiError):
            return feats
    video = visual[0] if visual is not None else None
    sound = audio[1] if audio is not None else (visual[1] if visual is not None else None)
    return dataclasses.replace(req, video=video, audio=sound)


class FeatureEncoder:
    """Frozen encoders with an LRU keyed by media identity: the next turn of a conversation
    about the same clip skips decoding and encoding."""

    def __init__(self, cfg: ServeConfig, model_cfg: ModelConfig):
        self.device = pick_device(cfg.device)
        self.encoders = AVEncoders(model_cfg.encoders, device=self.device)
        if self.encoders.dims() != model_cfg.dims:
            raise RuntimeError(f"encoders give {self.encoders.dims()}, the checkpoint was "
                               f"trained on {model_cfg.dims}")
        self.cache = FeatureCache(max(cfg.feature_cache_items, 1))
        self.caching = cfg.feature_cache_items > 0
        self._lock = threading.Lock()  # looked up on the event loop, filled from threads

    def cached(self, key: str) -> Features | None:
        if not self.caching:
            return None
        with self._lock:
            return self.cache.get(key)

    def encode(self, media: DecodedMedia, key: str | None = None) -> Features:
        video, audio = self.encoders.encode(media.frames, media.audio)
        feats = (None if video is None else video.cpu(), None if audio is None else audio.cpu())
        if key is not None and self.caching:
            with self._lock:
                self.cache.put(key, feats)
        return feats

    def stats(self) -> dict[str, int]:
        return {"hits": self.cache.hits, "misses": self.cache.misses, "items": len(self.cache)}


class ChatGenerator:
    """Connector + LLM over encoded features; a batch is split by decoding options."""

    def __init__(self, cfg: ServeConfig, model: AVModel | None = None):
        if model is None:
            with checkpoint_dir(cfg) as path:
                model = av_checkpoint.load(path, load_encoders=False,
                                           device=pick_device(cfg.device))
            if cfg.merge_lora:
                model.llm = merge_lora(model.llm)
        self.model = model

    def _sample(self, req: GenRequest) -> Sample:
        return Sample(req.turns, req.video, req.audio, image=req.image)

    def check(self, req: GenRequest) -> ApiError | None:
        """The prompt renders and fits (the processor's errors are the client's)."""
        try:
            self.model.collate([self._sample(req)], generation=True)
        except (ValueError, TemplateError) as err:  # a chat template's raise_exception
            return ApiError(400, str(err), param="messages", code="bad_conversation")
        return None

    def generate(self, requests: list[GenRequest]) -> list[Generation | ApiError]:
        """One result per request, in order; a bad request fails alone, not its batch.

        No per-request pre-check on this hot path: a prompt that cannot render fails in
        ``collate``, before any decoding, and only then are the group's requests retried
        one by one to find it."""
        results: list[Generation | ApiError | None] = [None] * len(requests)
        groups: dict[GenerateOptions, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            groups[r.options].append(i)
        for options, idx in groups.items():
            stop = self._deadline_stop([requests[i] for i in idx])
            try:
                out = self.model.generate_full([self._sample(requests[i]) for i in idx],
                                               options, stopping_criteria=_listed(stop))
                out = _cut_rows_timed_out(out, stop)
            except Exception:  # noqa: BLE001 - find the request at fault, spare the rest
                log.exception("batch of %d failed; retrying its requests one by one", len(idx))
                out = [self._alone(requests[i]) for i in idx]
            for i, g in zip(idx, out):
                results[i] = g
        return results

    def _deadline_stop(self, requests: list[GenRequest]) -> "_PastDeadline | None":
        """A stopping criterion for the requests that carry a deadline (None without)."""
        if all(r.deadline is None for r in requests):
            return None
        eos = self.model.llm.generation_config.eos_token_id
        ended = set(eos if isinstance(eos, (list, tuple)) else [eos])
        ended |= {self.model.tokenizer.pad_token_id}
        return _PastDeadline([math.inf if r.deadline is None else r.deadline
                              for r in requests], ended - {None})

    def _alone(self, req: GenRequest) -> Generation | ApiError:
        """A prompt that does not render is the client's (400); a failure past that, ours."""
        if (err := self.check(req)) is not None:
            return err
        try:
            stop = self._deadline_stop([req])
            return _cut_rows_timed_out(self.model.generate_full(
                [self._sample(req)], req.options, stopping_criteria=_listed(stop)), stop)[0]
        except Exception as err:  # noqa: BLE001
            return ApiError(500, f"generation failed: {type(err).__name__}",
                            type="server_error", code="generation_failed")

    def stream(self, req: GenRequest, timeout_s: float = 300.0,
               cancel: threading.Event | None = None) -> Iterator[str | Generation]:
        """Text deltas as tokens arrive, then the final ``Generation``; setting ``cancel``
        (the client went away) stops decoding at the next token."""
        err = self.check(req)
        if err is not None:
            raise err
        streamer = TextIteratorStreamer(self.model.tokenizer, skip_prompt=True,
                                        skip_special_tokens=True, timeout=timeout_s)
        stop = self._deadline_stop([req])
        done: dict[str, object] = {}

        def work() -> None:
            try:
                stops = _listed(stop) + ([_Cancelled(cancel)] if cancel is not None else [])
                done["result"] = _cut_rows_timed_out(self.model.generate_full(
                    [self._sample(req)], req.options, streamer=streamer,
                    stopping_criteria=stops), stop)[0]
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
                done["error"] = exc
                streamer.end()

        thread = threading.Thread(target=work, name="avray-stream", daemon=True)
        thread.start()
        deltas = StreamText(req.options.stop)
        for piece in streamer:
            if piece and (delta := deltas.feed(piece)):
                yield delta
        thread.join()
        if "error" in done:
            raise done["error"]  # type: ignore[misc]
        result = done["result"]
        if isinstance(result, ApiError):   # cut at its deadline: no finish, an error
            yield result
            return
        if tail := deltas.finish(result.text):
            yield tail
        yield result


def _listed(stop: StoppingCriteria | None) -> list[StoppingCriteria]:
    return [] if stop is None else [stop]


def _cut_rows_timed_out(out: list[Generation], stop: "_PastDeadline | None",
                        ) -> list[Generation | ApiError]:
    """A row the deadline cut is padded like a finished one and would pass for a complete
    answer ("stop"): it is the 504 its client got, or gets if the ingress's clock is behind
    this replica's."""
    if stop is None:
        return list(out)
    return [timed_out() if cut else g for g, cut in zip(out, stop.cut.tolist())]


class _PastDeadline(StoppingCriteria):
    """Per row: stop decoding a request once its deadline has passed; the batch's other
    rows go on (transformers ends rows whose criterion is true). ``cut`` marks the rows it
    stopped while they were still running (last token neither EOS nor padding)."""

    def __init__(self, deadlines: list[float], ended_ids: set[int]):
        self.deadlines = torch.tensor(deadlines, dtype=torch.float64)        # (B,)
        self.ended = torch.tensor(sorted(ended_ids), dtype=torch.long)
        self.cut = torch.zeros(len(deadlines), dtype=torch.bool)            # (B,)

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        # Beam search runs B x beams rows, each request's beams together.
        beams = input_ids.shape[0] // self.deadlines.shape[0]
        late = (time.time() > self.deadlines).repeat_interleave(beams)      # (B*beams,)
        running = ~torch.isin(input_ids[:, -1].cpu(), self.ended)           # (B*beams,)
        self.cut |= (late & running).view(-1, beams).any(dim=1)
        return late.to(input_ids.device)


class _Cancelled(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool,
                          device=input_ids.device)


class StreamText:
    """Turns streamed raw text into deltas whose concatenation is the final answer: leading
    and trailing whitespace trimmed, nothing of a stop string ever sent."""

    def __init__(self, stop: tuple[str, ...]):
        self.stop, self.raw, self.sent = stop, "", ""
        self.hold = max((len(s) for s in stop), default=1) - 1

    def feed(self, piece: str) -> str:
        self.raw += piece
        text = cut_at_stop(self.raw, self.stop)
        # Always hold back the last hold characters: a longer stop string that began
        # earlier may still complete and cut before them.
        text = text[:max(0, len(self.raw) - self.hold)]
        return self._advance(text.strip())

    def finish(self, final: str) -> str:
        return self._advance(final) if final.startswith(self.sent) else ""

    def _advance(self, safe: str) -> str:
        if not safe.startswith(self.sent) or len(safe) <= len(self.sent):
            return ""
        delta, self.sent = safe[len(self.sent):], safe
        return delta


class AVPredictor:
    """The whole chat path in one process: request JSON → OpenAI response JSON.

    Evaluation runs this in Ray Data actors; the benchmark compares it with the HTTP path.
    """

    def __init__(self, cfg: ServeConfig):
        replica_setup(cfg)
        self.cfg = cfg
        self.model_cfg = model_config(cfg)
        self.resolver = media_resolver(cfg, self.model_cfg)
        self._encoder: FeatureEncoder | None = None
        self.generator = ChatGenerator(cfg)

    @property
    def encoder(self) -> FeatureEncoder:
        """Built on first use: an evaluation on stored features never loads the encoders."""
        if self._encoder is None:
            self._encoder = FeatureEncoder(self.cfg, self.model_cfg)
        return self._encoder

    def features(self, part: MediaPart | None) -> Features | None:
        if part is None:
            return None
        key = self.resolver.cache_key(part)
        hit = self.encoder.cached(key)
        return hit if hit is not None else self.encoder.encode(self.resolver.decode(part), key)

    def prepare(self, body: dict) -> GenRequest:
        conv, req = plan(ChatCompletionRequest.model_validate(body), self.cfg.generation)
        return attach(req, self.features(conv.visual), self.features(conv.audio))

    def chat(self, bodies: list[dict]) -> list[dict]:
        """A batch of chat requests (one generate call per option group)."""
        requests = [self.prepare(b) for b in bodies]
        out = []
        for g in self.generator.generate(requests):
            if isinstance(g, ApiError):
                raise g
            out.append(completion_body(completion_id(), self.cfg.served_name, g.text,
                                       g.finish_reason, g.prompt_tokens, g.completion_tokens))
        return out
