"""AVModel: frozen encoders → slot sync → connector → LLM, trained on features or raw media.

Why the numbered steps live in one forward: training (stored features), serving and
evaluation (raw media through the same encoders) differ only in where step 0's features come
from, so everything after it is one code path and a test holds the two paths equal.

    model = AVModel.build(MODEL_PRESETS["small-qwen0.5b"])      # or checkpoint.load(...)
    batch = model.collate([Sample(video=v, audio=a, turns=conversation)])
    loss = model(**batch).loss
    model.generate([Sample(video=v, audio=a, turns=[{"role": "user", "content": "..."}])])
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import (AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase,
                          StoppingCriteriaList)

from av_model.config import ModelConfig
from av_model.configlib import ConfigError
from av_model.connectors.base import Connector
from av_model.connectors.factory import build_connector
from av_model.encoders.bundle import AVEncoders, feature_dims
from av_model.llm import build_llm
from av_model.losses import causal_lm_loss
from av_model.processor import AVProcessor
from av_model.sync import frames_per_slot, num_slots, synchronise
from av_model.tokens import fuse, modality_token

log = logging.getLogger(__name__)
Tensor = torch.Tensor


@dataclass
class Sample:
    """One conversation about at most one clip; features (T, Nv, Dv) / (A, Da) or None."""

    turns: list[dict[str, str]]
    video: Tensor | None = None
    audio: Tensor | None = None
    image: bool = False       # video is one still frame repeated over the audio


@dataclass
class AVOutput:
    loss: Tensor | None   # ce + aux
    ce: Tensor | None
    aux: Tensor           # connector auxiliary loss (diversity), already weighted
    logits: Tensor        # (B, T, V)


@dataclass(frozen=True)
class GenerateOptions:
    """Decoding settings (OpenAI-style names); greedy by default."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    num_beams: int = 1
    stop: tuple[str, ...] = ()
    synced_gpus: bool = False  # every rank decodes in lockstep (DeepSpeed ZeRO-3)


@dataclass(frozen=True)
class Generation:
    """One answer with what an OpenAI-style API reports about it."""

    text: str
    prompt_tokens: int       # media positions included
    completion_tokens: int   # generated tokens, end-of-sequence included
    finish_reason: str       # "stop" (EOS or a stop string) or "length" (max_new_tokens)


class FeatureCache:
    """LRU of encoded media per key (e.g. conversation + media URL): a follow-up turn about
    the same clip must not re-run the encoders."""

    def __init__(self, max_items: int = 64):
        self.max_items, self._items = max_items, OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: str):
        if key in self._items:
            self.hits += 1
            self._items.move_to_end(key)
            return self._items[key]
        self.misses += 1
        return None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: str, value) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)


class AVModel(nn.Module):
    def __init__(self, cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, llm: nn.Module,
                 connector: Connector, encoders: AVEncoders | None = None):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        self.processor = AVProcessor(tokenizer, cfg.llm)
        self.llm, self.connector, self.encoders = llm, connector, encoders
        self.register_buffer("media_ids", torch.tensor(self.processor.media_ids), persistent=False)
        self.slot_frames = frames_per_slot(cfg.encoders.fps, cfg.dims.audio_rate)
        self.cache = FeatureCache()

    @classmethod
    def build(cls, cfg: ModelConfig, *, load_encoders: bool = True,
              llm_path: str | None = None, adapter_path: str | None = None,
              tokenizer_path: str | None = None) -> "AVModel":
        """Tokenizer, LLM (mode per config), connector, and optionally the frozen encoders."""
        if not cfg.dims.resolved:
            cfg = dataclasses.replace(cfg, dims=feature_dims(cfg.encoders))
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or llm_path
                                                  or cfg.llm.name_or_path)
        processor = AVProcessor(tokenizer, cfg.llm)  # adds the modality tokens first
        llm = build_llm(cfg.llm, processor.tokenizer, path=llm_path, adapter_path=adapter_path)
        table = llm.get_input_embeddings().weight                    # (V, D)
        rms = embedding_rms(table) if cfg.connector.output_norm == "rms" else 1.0
        connector = build_connector(cfg, table.shape[1], rms)
        encoders = AVEncoders(cfg.encoders, device="cpu") if load_encoders else None
        if encoders is not None and encoders.dims() != cfg.dims:
            raise ConfigError("dims", f"{cfg.dims} does not match the encoders' "
                              f"{encoders.dims()}")
        return cls(cfg, tokenizer, llm, connector, encoders)

    # ------------------------------------------------------------------ step 0: features

    @torch.no_grad()
    def encode_media(self, frames: np.ndarray | None, waveform: np.ndarray | None,
                     cache_key: str | None = None) -> tuple[Tensor | None, Tensor | None]:
        """Decoded frames / 16 kHz waveform → features, via the cache when keyed."""
        if self.encoders is None:
            raise RuntimeError("model was built without encoders (load_encoders=False)")
        hit = self.cache.get(cache_key) if cache_key else None
        if hit is not None:
            return hit
        feats = self.encoders.encode(frames, waveform)
        if cache_key:
            self.cache.put(cache_key, feats)
        return feats

    # ------------------------------------------------------------------ prompts

    def media_tokens(self, sample: Sample) -> int:
        """LLM positions the connector fills for this sample (0 without media)."""
        t = 0 if sample.video is None else sample.video.shape[0]
        a = 0 if sample.audio is None else sample.audio.shape[0]
        if t == 0 and a == 0:
            return 0
        return self.connector.tokens_for(num_slots(t, a, self.slot_frames, sample.image))

    def collate(self, samples: list[Sample], generation: bool = False) -> dict:
        """Samples → padded ids/labels (+ the features the forward needs)."""
        encoded = []
        for s in samples:
            has_v = s.video is not None and s.video.shape[0] > 0
            has_a = s.audio is not None and s.audio.shape[0] > 0
            token = modality_token(has_v, has_a) if (has_v or has_a) else None
            encoded.append(self.processor.encode(s.turns, token, self.media_tokens(s),
                                                 generation=generation))
        batch = self.processor.pad(encoded, left=generation)
        batch.update(video=[s.video for s in samples], audio=[s.audio for s in samples],
                     image=[s.image for s in samples])
        return batch

    # ------------------------------------------------------------------ steps 1-4

    def _media_embeddings(self, video: list, audio: list, image: list[bool] | None,
                          ) -> tuple[Tensor, Tensor, Tensor]:
        """Steps 1-2: sync + connector for samples with media; zeros/0 for the rest."""
        dev = self.media_ids.device
        dtype = next(self.connector.parameters()).dtype
        b = len(video)
        image = image or [False] * b
        has = [i for i in range(b) if (video[i] is not None and video[i].shape[0] > 0)
               or (audio[i] is not None and audio[i].shape[0] > 0)]
        lengths = torch.zeros(b, dtype=torch.long, device=dev)
        def cast(x: Tensor | None) -> Tensor | None:
            # Copy in the stored dtype (float16 from the shards: half of float32's bytes),
            # convert on the device: converting first runs on the host, one thread, and
            # cost 0.145 s of a 0.330 s LoRA step on an H100 (benchmarks/RESULTS.md).
            if x is None or x.shape[0] == 0:
                return None
            return x.to(dev, non_blocking=True).to(dtype)

        dims = self.cfg.dims
        if has:
            vids, auds, imgs = [cast(video[i]) for i in has], [cast(audio[i]) for i in has], \
                [image[i] for i in has]
        else:
            # A text-only batch still runs the connector (on one silent slot, contributing
            # 0): every rank must touch every trainable parameter under DDP / ZeRO-3.
            vids, auds, imgs = [None], [torch.zeros(self.slot_frames, dims.audio_dim,
                                                    device=dev, dtype=dtype)], [False]
        synced = synchronise(vids, auds, fps=self.cfg.encoders.fps, audio_rate=dims.audio_rate,
                             video_dim=dims.video_dim, audio_dim=dims.audio_dim,
                             num_visual_tokens=dims.video_tokens, image=imgs)
        out = self.connector(synced)                                 # (B', N, D)
        if not has:
            zero = out.embeds.sum() * 0 + out.aux_loss * 0
            return out.embeds.new_zeros(b, 0, out.embeds.shape[2]), lengths, zero
        embeds = out.embeds.new_zeros(b, out.embeds.shape[1], out.embeds.shape[2])
        embeds[has] = out.embeds
        lengths[has] = out.lengths.to(dev)
        return embeds, lengths, out.aux_loss

    def embed(self, input_ids: Tensor, video: list, audio: list,
              image: list[bool] | None = None) -> tuple[Tensor, Tensor]:
        """Steps 1-4: features → connector → token embeddings with media fused in."""
        media, lengths, aux = self._media_embeddings(video, audio, image)
        text = self.llm.get_input_embeddings()(input_ids)            # (B, T, D)
        if media.shape[1] == 0:
            return text + aux.to(text.dtype), aux  # aux is 0 here; keeps the connector in the graph
        return fuse(text, input_ids, self.media_ids, media, lengths), aux

    def forward(self, input_ids: Tensor, attention_mask: Tensor, video: list, audio: list,
                labels: Tensor | None = None, image: list[bool] | None = None) -> AVOutput:
        """1. sync  2. connector  3. text embeddings  4. fuse  5. LLM  6. CE + λ·diversity."""
        dev = self.media_ids.device
        input_ids, attention_mask = input_ids.to(dev), attention_mask.to(dev)
        embeds, aux = self.embed(input_ids, video, audio, image)
        logits = self.llm(inputs_embeds=embeds, attention_mask=attention_mask).logits
        if labels is None:
            return AVOutput(None, None, aux, logits)
        ce = causal_lm_loss(logits, labels.to(dev))
        return AVOutput(ce + aux, ce, aux, logits)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(self, samples: list[Sample], options: GenerateOptions = GenerateOptions(),
                 ) -> list[str]:
        """Answer the last user turn of each sample (greedy, beam or sampling)."""
        return [g.text for g in self.generate_full(samples, options)]

    @torch.no_grad()
    def generate_full(self, samples: list[Sample], options: GenerateOptions = GenerateOptions(),
                      streamer=None, stopping_criteria: list | None = None) -> list[Generation]:
        """``generate`` plus what an API reports: token counts and why decoding stopped.
        ``streamer`` (a transformers streamer, batch of one) receives tokens as they come;
        ``stopping_criteria`` (transformers') can end decoding early, e.g. on cancellation."""
        batch = self.collate(samples, generation=True)
        dev = self.media_ids.device
        ids, mask = batch["input_ids"].to(dev), batch["attention_mask"].to(dev)
        was_training = self.training
        self.eval()  # no dropout (LoRA's included) while decoding, even mid-training
        try:
            embeds, _ = self.embed(ids, batch["video"], batch["audio"], batch["image"])
            out = self.llm.generate(inputs_embeds=embeds, attention_mask=mask,
                                    generation_config=self._generation_config(options),
                                    synced_gpus=options.synced_gpus, streamer=streamer,
                                    stopping_criteria=StoppingCriteriaList(stopping_criteria or []),
                                    **({"tokenizer": self.tokenizer} if options.stop else {}))
        finally:
            self.train(was_training)
        eos = self.llm.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        results = []
        for row, prompt in zip(out.tolist(), mask.sum(dim=1).tolist()):
            # With inputs_embeds only, generate returns the new tokens; rows end at EOS and
            # are padded after it.
            new, ended = _until_end(row, eos, self.tokenizer.pad_token_id)
            raw = self.tokenizer.decode(new, skip_special_tokens=True)
            text = cut_at_stop(raw, options.stop)
            stopped = ended or text != raw or len(new) < options.max_new_tokens
            results.append(Generation(text.strip(), int(prompt), len(new),
                                      "stop" if stopped else "length"))
        return results

    def _generation_config(self, options: GenerateOptions) -> GenerationConfig:
        """Only our options plus the LLM's stop ids: a checkpoint's own defaults
        (repetition_penalty, top_k, ...) must not leak into greedy decoding."""
        base = self.llm.generation_config
        kw = dict(max_new_tokens=options.max_new_tokens, num_beams=options.num_beams,
                  do_sample=options.do_sample, eos_token_id=base.eos_token_id,
                  pad_token_id=self.tokenizer.pad_token_id,
                  suppress_tokens=list(self.processor.media_ids))
        if options.do_sample:
            kw.update(temperature=options.temperature, top_p=options.top_p, top_k=0)
        if options.stop:
            kw.update(stop_strings=list(options.stop))
        return GenerationConfig(**kw)


def embedding_rms(table: Tensor) -> float:
    """RMS of the rows of an embedding table that are in use (the modality placeholders
    added by ``load_base`` are zero and would pull the figure down)."""
    with torch.no_grad():
        rows = table.float()
        rows = rows[rows.abs().sum(dim=1) > 0]                      # (V', D)
        return float(rows.pow(2).mean().sqrt()) if rows.numel() else 1.0


def _until_end(row: list[int], eos: set[int], pad: int | None) -> tuple[list[int], bool]:
    """Generated ids up to and including EOS (a stop-string stop is padded after it)."""
    for i, t in enumerate(row):
        if t in eos:
            return row[:i + 1], True
        if t == pad:
            return row[:i], True
    return row, False


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return text if cut < 0 else text[:cut]


