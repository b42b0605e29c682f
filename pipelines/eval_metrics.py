"""Evaluation metrics, computed by the libraries the papers' numbers come from.

    wer       jiwer, corpus level (total edits / total reference words), after a text
              normaliser (Whisper's English normaliser by default, as in Whisper's and the
              FAVOR/SALMONN ASR tables)
    caption   pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L, CIDEr on PTB-tokenised text, plus
              SPICE and SPIDEr when Stanford CoreNLP 3.6.0's jars are present (they cannot be
              downloaded here). What a machine cannot compute (METEOR and the PTB tokenizer
              need Java) is named by ``caption_skips``: the harness logs it once per task
              and records it beside the scores
    accuracy  an answer counts when, after normalisation, it equals a reference (or, with
              ``match="contains"``, holds one as a whole-word phrase)
    choice_accuracy   multiple choice: the answer is mapped to one option (by letter, index,
              the option text, or the one option it mentions) and compared with the reference
    vqa_accuracy      VQA's consensus score, min(#other annotators who gave it / 3, 1)
                      averaged over leave-one-annotator-out subsets

Every metric returns ``(aggregate dict, per-sample scores)`` so the harness can log one table
and per-sample predictions alike.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from typing import Callable, Sequence

import jiwer
from whisper_normalizer.basic import BasicTextNormalizer
from whisper_normalizer.english import EnglishTextNormalizer

METRICS = ("wer", "caption", "accuracy", "choice_accuracy", "vqa_accuracy")
NORMALISERS = ("whisper_en", "whisper_basic", "answer", "none")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_LETTER = re.compile(r"^\(?([A-Za-z])(?:[).:]|\s*$)")  # "B", "(b)", "B.", "B) text"
_STATED = re.compile(r"\b(?:answer|option|choice)(?:\s+is)?\s*:?\s*\(?([A-Za-z])\b\)?",
                     re.IGNORECASE)                  # "The answer is B", "Answer: (b)"


@functools.lru_cache(maxsize=None)
def normaliser(name: str) -> Callable[[str], str]:
    """Text normaliser by name.

    ``answer`` is the short-answer rule of VQA-style scoring: Whisper's basic normaliser
    (lower case, punctuation and symbols removed) without articles, spaces collapsed.
    """
    if name == "whisper_en":
        english = EnglishTextNormalizer()
        return lambda s: " ".join(english(s).split())
    if name == "whisper_basic":
        basic = BasicTextNormalizer()
        return lambda s: " ".join(basic(s).split())
    if name == "answer":
        basic = BasicTextNormalizer()
        return lambda s: " ".join(_ARTICLES.sub(" ", basic(s)).split())
    if name == "none":
        return lambda s: s.strip()
    raise ValueError(f"unknown normaliser {name!r} (known: {NORMALISERS})")


# ----------------------------------------------------------------------------- WER


def wer(predictions: Sequence[str], references: Sequence[str],
        normalise: str = "whisper_en") -> tuple[dict[str, float], list[float]]:
    """Corpus WER plus each sample's own WER (a reference that normalises to nothing
    scores 0 for an empty answer and 1 otherwise, and adds no words to the corpus count)."""
    norm = normaliser(normalise)
    hyps, refs = [norm(p) for p in predictions], [norm(r) for r in references]
    per, edits, words = [], 0, 0
    for h, r in zip(hyps, refs):
        if not r:
            per.append(0.0 if not h else 1.0)
            continue
        out = jiwer.process_words(r, h)
        errors = out.substitutions + out.deletions + out.insertions
        per.append(errors / len(r.split()))
        edits += errors
        words += len(r.split())
    agg = {"wer": edits / words if words else 0.0, "ref_words": float(words)}
    return agg, per


# ----------------------------------------------------------------------------- captions


def java_available() -> bool:
    return shutil.which("java") is not None


SPICE_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def spice_missing(lib: str | None = None) -> str | None:
    """Why SPICE cannot run here, or None. spice-1.0.jar's class path names both CoreNLP
    3.6.0 jars, and ``Spice()`` tries to download them (no network here) unless the code
    jar is already in ``lib`` (pycocoevalcap's ``spice/lib``): both must be there."""
    if not java_available():
        return "SPICE needs a Java runtime (java not on PATH)"
    if lib is None:
        from pycocoevalcap import spice
        lib = os.path.join(os.path.dirname(spice.__file__), "lib")
    absent = [j for j in SPICE_JARS if not os.path.isfile(os.path.join(lib, j))]
    if absent:
        return (f"SPICE needs Stanford CoreNLP 3.6.0: {', '.join(absent)} not in {lib} (run "
                f"pycocoevalcap.spice.get_stanford_models on a machine with internet)")
    return None


def spice_available() -> bool:
    return spice_missing() is None


def caption_skips(with_meteor: bool = True) -> dict[str, str]:
    """What ``caption`` leaves out or approximates on this machine, name → reason. Why it
    is returned, not only logged: a results table without a METEOR or SPICE column must
    say why, and a score from approximate tokenisation must not pass for the COCO one."""
    out: dict[str, str] = {}
    if not java_available():
        out["ptb_tokenizer"] = ("approximated: no Java runtime (java not on PATH), so "
                                "captions were tokenised by Whisper's basic normaliser instead "
                                "of the PTB tokenizer (scores differ slightly from COCO's)")
        if with_meteor:
            out["meteor"] = "not computed: METEOR needs a Java runtime (java not on PATH)"
    if (why := spice_missing()) is not None:
        out["spice"] = f"not computed: {why}"
        out["spider"] = "not computed: SPIDEr is the mean of SPICE and CIDEr"
    return out


def _tokenise(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    """PTB tokenisation as in the COCO caption evaluation (Java). Without Java the same
    rule is approximated by Whisper's basic normaliser (``caption_skips`` says so)."""
    if java_available():
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
        return PTBTokenizer().tokenize({k: [{"caption": c} for c in v]
                                        for k, v in captions.items()})
    norm = normaliser("whisper_basic")
    return {k: [norm(c) for c in v] for k, v in captions.items()}


def caption(predictions: Sequence[str], references: Sequence[Sequence[str]],
            with_meteor: bool = True) -> tuple[dict[str, float], list[float]]:
    """COCO caption metrics; per-sample scores are each caption's CIDEr. Metrics this
    machine cannot compute are absent (``caption_skips(with_meteor)`` names them); they
    are not logged here, as the harness calls this once per task and once per group."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if not predictions:
        return {}, []
    skips = caption_skips(with_meteor)
    keys = [str(i) for i in range(len(predictions))]
    res = _tokenise({k: [p] for k, p in zip(keys, predictions)})
    gts = _tokenise({k: list(r) for k, r in zip(keys, references)})
    res = {k: v if v[0].strip() else ["<empty>"] for k, v in res.items()}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    agg = {f"bleu_{i + 1}": float(b) for i, b in enumerate(bleu)}
    agg["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    cider, per = Cider().compute_score(gts, res)
    agg["cider"] = float(cider)
    if with_meteor and "meteor" not in skips:
        from pycocoevalcap.meteor.meteor import Meteor
        agg["meteor"] = float(Meteor().compute_score(gts, res)[0])
    if "spice" not in skips:
        from pycocoevalcap.spice.spice import Spice
        agg["spice"] = float(Spice().compute_score(gts, res)[0])
        agg["spider"] = (agg["spice"] + agg["cider"]) / 2.0
    return agg, [float(x) for x in per]


# ----------------------------------------------------------------------------- answers


def _holds(text: str, phrase: str) -> bool:
    return bool(phrase) and re.search(rf"(^| ){re.escape(phrase)}( |$)", text) is not None


def accuracy(predictions: Sequence[str], references: Sequence[Sequence[str]],
             normalise: str = "answer", match: str = "exact"
             ) -> tuple[dict[str, float], list[float]]:
    """1 when the normalised answer equals (or, ``contains``, holds) a normalised reference."""
    if match not in ("exact", "contains"):
        raise ValueError(f"match must be 'exact' or 'contains', got {match!r}")
    norm = normaliser(normalise)
    per = []
    for p, refs in zip(predictions, references):
        a, rs = norm(p), [norm(r) for r in refs]
        hit = a in rs if match == "exact" else any(_holds(a, r) for r in rs)
        per.append(1.0 if hit else 0.0)
    return {"accuracy": _mean(per)}, per


def pick_choice(answer: str, choices: Sequence[str], normalise: str = "answer") -> int | None:
    """Which option an answer names, or None when it names none or several:
      1. the option's text itself;
      2. a leading letter ("B", "(b)", "B. blue") or a stated one ("The answer is B",
         "Answer: (b)", "option B");
      3. a 1-based option number ("2"), when no option is itself a number;
      4. the one option whose text the answer holds as a phrase; an option held only
         inside another held option ("red" in "red circle") does not count.
    """
    norm = normaliser(normalise)
    options = [norm(c) for c in choices]
    text = norm(answer)
    if text in options:
        return options.index(text)
    letter = _LETTER.match(answer.strip()) or _STATED.search(answer)
    if letter:
        idx = ord(letter.group(1).upper()) - ord("A")
        if 0 <= idx < len(choices):
            return idx
    if text.isdigit() and not any(o.isdigit() for o in options) and \
            1 <= int(text) <= len(choices):
        return int(text) - 1
    named = [i for i, o in enumerate(options) if _holds(text, o)]
    named = [i for i in named if not any(j != i and _holds(options[j], options[i])
                                         and options[j] != options[i] for j in named)]
    return named[0] if len(named) == 1 else None


def choice_accuracy(predictions: Sequence[str], references: Sequence[Sequence[str]],
                    choices: Sequence[Sequence[str]], normalise: str = "answer"
                    ) -> tuple[dict[str, float], list[float]]:
    """Multiple choice: the picked option must be a reference; ``unmatched`` is the share of
    answers that named no single option (a model that rambles shows up there)."""
    per, unmatched = [], 0
    norm = normaliser(normalise)
    for p, refs, opts in zip(predictions, references, choices):
        idx = pick_choice(p, opts, normalise)
        unmatched += idx is None
        good = {norm(r) for r in refs}
        per.append(1.0 if idx is not None and norm(opts[idx]) in good else 0.0)
    return {"accuracy": _mean(per), "unmatched": unmatched / max(len(per), 1)}, per


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]],
                 normalise: str = "answer") -> tuple[dict[str, float], list[float]]:
    """VQA's consensus accuracy as the official evaluation computes it: for each annotator,
    min(#other annotators who gave the answer / 3, 1), averaged over the annotators (an
    answer 3 of 10 gave scores 0.9, one of 10 gave 0.3). Answers are compared after
    ``normalise`` (the official script's own number and contraction rules are not applied)."""
    norm = normaliser(normalise)
    per = []
    for p, refs in zip(predictions, answers):
        a, given = norm(p), [norm(r) for r in refs]
        hits = sum(g == a for g in given)
        per.append(_mean([min((hits - (g == a)) / 3.0, 1.0) for g in given]))
    return {"vqa_accuracy": _mean(per)}, per


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0
