"""Conversation → token ids and labels, shared by training, serving and evaluation.

Why one processor: the prompt a model is trained on must be byte-identical to the prompt it
is served with. It renders the LLM's own chat template when the tokenizer has one and the
Vicuna ``USER: … ASSISTANT: …`` template otherwise, labels only assistant turns (everything
else is -100), and expands the media placeholder to the connector's token count.

Assistant spans are found by rendering prefixes: the characters a template adds between
``render(turns[:k], add_generation_prompt=True)`` and ``render(turns[:k+1])`` are turn k's
answer (end-of-turn token included, so the model learns to stop).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from av_model.config import LLMConfig
from av_model.losses import IGNORE_INDEX
from av_model.tokens import MODALITY_TOKENS, add_modality_tokens, expand_placeholder

# Vicuna v1.1: "SYSTEM USER: q ASSISTANT: a</s>USER: q2 ASSISTANT:"
VICUNA_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }} "
    "{% elif m['role'] == 'user' %}USER: {{ m['content'] }} "
    "{% elif m['role'] == 'assistant' %}ASSISTANT: {{ m['content'] }}{{ eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
_PLACEHOLDER = re.compile("|".join(re.escape(t) for t in MODALITY_TOKENS))


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


def _check_roles(turns: list[dict[str, str]]) -> None:
    for i, t in enumerate(turns):
        if t.get("role") not in ("system", "user", "assistant") or not isinstance(
                t.get("content"), str):
            raise ValueError(f"turn {i} must be {{role: system|user|assistant, content: str}}, "
                             f"got {t!r}")
    if not any(t["role"] == "user" for t in turns):
        raise ValueError("a conversation needs at least one user turn")


class AVProcessor:
    """Renders, tokenises, labels and pads conversations for one tokenizer and LLM config."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, cfg: LLMConfig):
        self.tokenizer, self.cfg = tokenizer, cfg
        self.media_ids = add_modality_tokens(tokenizer)
        own = getattr(tokenizer, "chat_template", None)
        self.template = own if (cfg.template == "auto" and own) else VICUNA_TEMPLATE

    def render(self, turns: list[dict[str, str]], generation: bool) -> str:
        return self.tokenizer.apply_chat_template(turns, chat_template=self.template,
                                                  tokenize=False,
                                                  add_generation_prompt=generation)

    def _with_media(self, turns: list[dict[str, str]], token: str | None) -> list[dict[str, str]]:
        """System prompt first; the placeholder set to ``token`` (added to the first user turn)."""
        turns = [dict(t) for t in turns]
        if self.cfg.system_prompt and turns[0]["role"] != "system":
            turns.insert(0, {"role": "system", "content": self.cfg.system_prompt})
        if token is None:
            if any(_PLACEHOLDER.search(t["content"]) for t in turns):
                raise ValueError("conversation names media but the sample has none")
            return turns
        found = False
        for t in turns:
            if t["role"] == "user" and _PLACEHOLDER.search(t["content"]):
                t["content"] = _PLACEHOLDER.sub(token, t["content"], count=1)
                found = True
                break
        if not found:
            first = next(t for t in turns if t["role"] == "user")
            first["content"] = f"{token}\n{first['content']}"
        return turns

    def _answer_spans(self, turns: list[dict[str, str]], text: str) -> list[tuple[int, int]]:
        spans = []
        for k, t in enumerate(turns):
            if t["role"] != "assistant":
                continue
            head = self.render(turns[:k], generation=True)
            full = self.render(turns[:k + 1], generation=False)
            if not (full.startswith(head) and text.startswith(full)):
                raise ValueError("chat template is not prefix-stable; cannot label answers")
            spans.append((len(head), len(full)))
        return spans

    def encode(self, turns: list[dict[str, str]], media_token: str | None, media_count: int,
               generation: bool = False) -> Encoded:
        """Token ids and labels; ``generation`` appends the assistant prompt, no labels."""
        _check_roles(turns)
        if generation and turns[-1]["role"] == "assistant":
            raise ValueError("a generation prompt must end with a user turn")
        turns = self._with_media(turns, media_token)
        text = self.render(turns, generation)
        spans = [] if generation else self._answer_spans(turns, text)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        labels = [tok if any(s <= a < e for s, e in spans) else IGNORE_INDEX
                  for tok, (a, _) in zip(ids, offsets)]
        bos = self.tokenizer.bos_token
        if bos and not text.startswith(bos) and self.tokenizer.bos_token_id is not None:
            ids, labels = [self.tokenizer.bos_token_id] + ids, [IGNORE_INDEX] + labels
        if media_token is not None:
            ids, labels = expand_placeholder(ids, labels, self.media_ids, media_count)
        return self._truncate(Encoded(ids, labels), generation)

    def _truncate(self, enc: Encoded, generation: bool) -> Encoded:
        """Cut trailing answer tokens past max_length; never the media or a prompt's end."""
        limit = self.cfg.max_length
        if len(enc.input_ids) <= limit:
            return enc
        if generation:
            raise ValueError(f"prompt is {len(enc.input_ids)} tokens, over llm.max_length="
                             f"{limit}; shorten the conversation or the media")
        last_media = max((i for i, t in enumerate(enc.input_ids) if t in self.media_ids),
                         default=-1)
        if last_media >= limit:
            raise ValueError(f"media tokens end at position {last_media + 1}, past "
                             f"llm.max_length={limit}")
        return Encoded(enc.input_ids[:limit], enc.labels[:limit])

    def pad(self, batch: list[Encoded], left: bool = False) -> dict[str, torch.Tensor]:
        """Pad to the longest: right for training, left for generation."""
        width = max(len(e.input_ids) for e in batch)
        pad_id = self.tokenizer.pad_token_id
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, e in enumerate(batch):
            n = len(e.input_ids)
            sl = slice(width - n, width) if left else slice(0, n)
            ids[i, sl] = torch.tensor(e.input_ids)
            labels[i, sl] = torch.tensor(e.labels)
            mask[i, sl] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
