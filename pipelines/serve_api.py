"""The OpenAI chat-completions schema as avray serves it, and the request → conversation step.

Why a module of its own: the ingress, the in-process predictor (evaluation, benchmarks) and
the tests all turn the same JSON into the same ``Conversation``, and every refusal is an
``ApiError`` that renders as OpenAI's ``{"error": {...}}`` body with a 4xx status.

Content parts: ``text``, ``image_url`` and ``input_audio`` (OpenAI), ``video_url`` and
``audio_url`` (the vLLM extension). A conversation is about at most one visual (video or
image) and one audio part; an audio part given with a video replaces the video's own track.
The media's place in the first message that carries it becomes the model's modality token,
so ``[video, "What is it?"]`` renders exactly as the training prompt ``<AUD_VIS>\\nWhat is it?``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from av_model.tokens import AUD_VIS, MODALITY_TOKENS


class ApiError(Exception):
    """A request we refuse: HTTP status plus OpenAI's error fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = \
            status, message, type, param, code

    def __reduce__(self):  # keep every field across Ray's process boundary
        return (_rebuild_error, (self.status, self.message, self.type, self.param, self.code))

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def _rebuild_error(status, message, type, param, code) -> ApiError:
    return ApiError(status, message, type=type, param=param, code=code)


def timed_out(timeout_s: float | None = None) -> ApiError:
    """The request ran past its deadline (``http.request_timeout_s``)."""
    limit = f"over {timeout_s} s" if timeout_s is not None else "past its deadline"
    return ApiError(504, f"request took {limit}", type="timeout_error", code="timeout")


# ----------------------------------------------------------------------------- request schema

class _Open(BaseModel):
    model_config = ConfigDict(extra="ignore")


class UrlRef(_Open):
    url: str


class InputAudio(_Open):
    data: str          # base64
    format: str = "wav"


class ContentPart(_Open):
    type: Literal["text", "image_url", "video_url", "input_audio", "audio_url"]
    text: str | None = None
    image_url: UrlRef | None = None
    video_url: UrlRef | None = None
    audio_url: UrlRef | None = None
    input_audio: InputAudio | None = None


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(_Open):
    include_usage: bool = False


class ChatCompletionRequest(_Open):
    """Fields we honour; other OpenAI fields are accepted and have no effect, except the
    ones that would change the answer's meaning (``n`` > 1, tools, logprobs): refused."""

    model: str
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = 1
    tools: list[Any] | None = None
    logprobs: bool | None = None


# ----------------------------------------------------------------------------- conversation

@dataclass(frozen=True)
class MediaPart:
    """One media reference from a request; ``param`` names it in error messages."""

    kind: Literal["video", "image", "audio"]
    url: str      # file://, s3:// or data: URL
    param: str


@dataclass
class Conversation:
    turns: list[dict[str, str]]
    visual: MediaPart | None = None
    audio: MediaPart | None = None


_KINDS = {"video_url": "video", "image_url": "image", "audio_url": "audio",
          "input_audio": "audio"}


def _media_part(part: ContentPart, param: str) -> MediaPart:
    ref = getattr(part, part.type)
    if ref is None:
        raise ApiError(400, f"content part of type {part.type!r} has no {part.type!r} field",
                       param=param)
    if part.type == "input_audio":
        fmt = ref.format.lower().lstrip(".")
        if not fmt.isalnum():
            raise ApiError(400, f"bad audio format {ref.format!r}",
                           param=f"{param}.input_audio.format")
        return MediaPart("audio", f"data:audio/{fmt};base64,{ref.data}",
                         f"{param}.input_audio.data")
    return MediaPart(_KINDS[part.type], ref.url, f"{param}.{part.type}.url")


def _text(text: str, param: str) -> str:
    for token in MODALITY_TOKENS:
        if token in text:
            raise ApiError(400, f"text may not contain the reserved token {token}; send media "
                                "as content parts", param=param)
    return text


def to_conversation(req: ChatCompletionRequest) -> Conversation:
    """Messages → chat turns with one modality placeholder, plus the media parts."""
    conv = Conversation(turns=[])
    for i, msg in enumerate(req.messages):
        role = "system" if msg.role == "developer" else msg.role
        content = msg.content if msg.content is not None else ""
        if isinstance(content, str):
            conv.turns.append({"role": role, "content": _text(content, f"messages[{i}].content")})
            continue
        pieces = []
        for j, part in enumerate(content):
            param = f"messages[{i}].content[{j}]"
            if part.type == "text":
                pieces.append(_text(part.text or "", f"{param}.text"))
                continue
            if role != "user":
                raise ApiError(400, f"media parts are only allowed in user messages, not "
                                    f"{msg.role}", param=param)
            media = _media_part(part, param)
            slot = "audio" if media.kind == "audio" else "visual"
            if getattr(conv, slot) is not None:
                raise ApiError(400, f"a conversation may carry at most one {slot} part "
                                    "(video or image) and one audio part", param=param)
            first = conv.visual is None and conv.audio is None
            setattr(conv, slot, media)
            if first:
                pieces.append(AUD_VIS)  # the processor sets the right token for the media
        conv.turns.append({"role": role, "content": "\n".join(pieces)})
    if conv.turns[-1]["role"] != "user":
        raise ApiError(400, "the last message must be from the user", param="messages")
    return conv


MAX_STOP_CHARS = 64  # transformers' stop-string set-up costs vocabulary × length


def stop_strings(req: ChatCompletionRequest) -> tuple[str, ...]:
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > 4 or any(not s or len(s) > MAX_STOP_CHARS for s in stop):
        raise ApiError(400, f"stop takes up to 4 non-empty strings of at most "
                            f"{MAX_STOP_CHARS} characters", param="stop")
    return tuple(stop)


def check_supported(req: ChatCompletionRequest) -> None:
    if req.n not in (None, 1):
        raise ApiError(400, "only n=1 is supported", param="n")
    if req.tools:
        raise ApiError(400, "tools are not supported by this model", param="tools")
    if req.logprobs:
        raise ApiError(400, "logprobs are not supported", param="logprobs")


# ----------------------------------------------------------------------------- responses

def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def completion_body(cid: str, model: str, text: str, finish_reason: str,
                    prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason, "logprobs": None}],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk_body(cid: str, model: str, delta: dict[str, str], finish_reason: str | None = None,
               usage_counts: dict[str, int] | None = None) -> dict[str, Any]:
    """One ``chat.completion.chunk``; a usage-only chunk has no choices (OpenAI's shape)."""
    choices = [] if usage_counts is not None else [
        {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
    body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "choices": choices}
    if usage_counts is not None:
        body["usage"] = usage_counts
    return body


def models_body(name: str, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                        "owned_by": "avray"}]}
