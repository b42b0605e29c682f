"""Modality tokens, placeholder expansion, masked_scatter fusion and the chat processor."""

import pytest
import torch
from transformers import AutoTokenizer

from av_model.config import LLMConfig
from av_model.processor import VICUNA_TEMPLATE, AVProcessor
from av_model.tokens import AUD, AUD_VIS, VIS, expand_placeholder, fuse, modality_token

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TURNS = [{"role": "user", "content": "<AUD_VIS>\nWhat colour is the circle?"},
         {"role": "assistant", "content": "red"},
         {"role": "user", "content": "How many beeps?"},
         {"role": "assistant", "content": "two"}]


@pytest.fixture()
def tokenizer(tiny_encoders):
    return AutoTokenizer.from_pretrained(tiny_encoders["llm"])


def test_modality_token_choice():
    assert [modality_token(True, True), modality_token(True, False),
            modality_token(False, True)] == [AUD_VIS, VIS, AUD]
    with pytest.raises(ValueError):
        modality_token(False, False)


def test_fuse_places_media_with_uneven_counts_per_sample():
    media_ids = torch.tensor([90, 91, 92])
    ids = torch.tensor([[1, 92, 92, 92, 5, 6],        # 3 media positions
                        [1, 2, 90, 5, 0, 0],          # 1
                        [1, 2, 3, 4, 5, 6]])          # none (text only)
    text = torch.zeros(3, 6, 4)
    media = torch.arange(3 * 3 * 4, dtype=torch.float).view(3, 3, 4) + 1
    out = fuse(text, ids, media_ids, media, torch.tensor([3, 1, 0]))
    torch.testing.assert_close(out[0, 1:4], media[0])
    torch.testing.assert_close(out[1, 2], media[1, 0])
    assert out[0, [0, 4, 5]].abs().sum() == 0 and out[1, [0, 1, 3]].abs().sum() == 0
    assert out[2].abs().sum() == 0
    with pytest.raises(ValueError, match="placeholder positions"):
        fuse(text, ids, media_ids, media, torch.tensor([2, 1, 0]))


def test_expand_placeholder():
    ids, labels = expand_placeholder([1, 7, 2], [-100, -100, 2], [7], 3)
    assert ids == [1, 7, 7, 7, 2] and labels == [-100] * 4 + [2]
    with pytest.raises(ValueError, match="exactly one"):
        expand_placeholder([7, 7], [-100, -100], [7], 2)


def _answer_text(proc, enc):
    return [proc.tokenizer.decode([i]) for i, l in zip(enc.input_ids, enc.labels) if l != -100]


def test_vicuna_template_labels_only_answers_and_expands_media(tokenizer):
    proc = AVProcessor(tokenizer, LLMConfig("x", template="auto"))
    assert proc.template == VICUNA_TEMPLATE                          # tiny has no template
    enc = proc.encode(TURNS, VIS, 5)
    text = tokenizer.decode(enc.input_ids)
    assert text.startswith("<s>A chat between")
    assert "USER: <VIS><VIS><VIS><VIS><VIS>\nWhat colour" in text    # canonical modality token
    assert "<AUD_VIS>" not in text
    assert "".join(_answer_text(proc, enc)) == " red</s> two</s>"
    assert len(enc.input_ids) == len(enc.labels)
    gen = proc.encode(TURNS[:3], AUD_VIS, 2, generation=True)
    assert tokenizer.decode(gen.input_ids).endswith("How many beeps? ASSISTANT:")
    assert set(gen.labels) == {-100}


def test_own_chat_template_and_placeholder_insertion(tokenizer):
    tokenizer.chat_template = CHATML
    proc = AVProcessor(tokenizer, LLMConfig("x", system_prompt=""))
    turns = [{"role": "user", "content": "Describe it."}, {"role": "assistant", "content": "A cat."}]
    enc = proc.encode(turns, AUD, 2)
    text = tokenizer.decode(enc.input_ids)
    assert text.startswith("<s><|im_start|>user\n<AUD><AUD>\nDescribe it.")
    assert "".join(_answer_text(proc, enc)) == "A cat.<|im_end|>\n"
    vic = AVProcessor(tokenizer, LLMConfig("x", template="vicuna"))
    assert vic.template == VICUNA_TEMPLATE


def test_bad_conversations_and_truncation(tokenizer):
    proc = AVProcessor(tokenizer, LLMConfig("x", max_length=40))
    with pytest.raises(ValueError, match="turn 0"):
        proc.encode([{"role": "bot", "content": "x"}], VIS, 1)
    with pytest.raises(ValueError, match="user turn"):
        proc.encode([{"role": "assistant", "content": "x"}], None, 0)
    with pytest.raises(ValueError, match="has none"):
        proc.encode(TURNS, None, 0)
    with pytest.raises(ValueError, match="max_length"):
        proc.encode(TURNS, VIS, 60)
    short = AVProcessor(tokenizer, LLMConfig("x", system_prompt="", max_length=12))
    enc = short.encode(TURNS, VIS, 4)
    assert len(enc.input_ids) == 12
    free = AVProcessor(tokenizer, LLMConfig("x", system_prompt=""))
    a, b = free.encode(TURNS, VIS, 1), free.encode(TURNS[:2], VIS, 1)
    left, right = free.pad([a, b], left=True), free.pad([a, b])
    n = len(a.input_ids) - len(b.input_ids)
    assert left["attention_mask"][1, :n].sum() == 0 and right["attention_mask"][1, -n:].sum() == 0
    assert left["input_ids"][1, n:].tolist() == b.input_ids == right["input_ids"][1, :-n].tolist()
    assert (right["labels"][1, -n:] == -100).all()
