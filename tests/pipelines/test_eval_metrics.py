"""Metric known answers: each number here was worked out by hand or is the library's own."""

import math

import pytest

from pipelines import eval_metrics as m


def test_wer_eleven_words_three_substitutions():
    ref = "one two three four five six seven eight nine ten eleven"
    hyp = "one two tree four five sex seven eight nine tan eleven"
    agg, per = m.wer([hyp], [ref], normalise="none")
    assert agg["wer"] == pytest.approx(3 / 11) and per == [pytest.approx(0.2727272727)]
    assert agg["ref_words"] == 11


def test_wer_is_corpus_level_and_whisper_normalised():
    # Whisper's English normaliser: case, punctuation, "we're" -> "we are", "Mr" -> "mister".
    refs = ["Mr Quilter is the apostle of the middle classes.", "We're glad to welcome his gospel"]
    hyps = ["mister quilter is the apostle of the middle class", "we are glad to welcome his gospel"]
    agg, per = m.wer(hyps, refs)
    assert per == [pytest.approx(1 / 9), 0.0]
    assert agg["wer"] == pytest.approx(1 / 16)          # 1 edit over 9 + 7 reference words
    # A reference that normalises to nothing (bracketed noise) adds no words; its sample scores 1 when the model said something.
    agg, per = m.wer(["hello", ""], ["[noise]", "(laughs)"])
    assert per == [1.0, 0.0] and agg["wer"] == 0.0


def test_caption_metrics_equal_pycocoevalcap_on_the_same_tokens():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    preds = ["a red circle then a blue square", "a green circle", "two beeps and a low tone"]
    refs = [["A red circle, then a blue square.", "a red circle and a blue square"],
            ["A green triangle."], ["A low tone and two beeps."]]
    agg, per = m.caption(preds, refs, with_meteor=False)
    gts = m._tokenise({str(i): r for i, r in enumerate(refs)})
    res = m._tokenise({str(i): [p] for i, p in enumerate(preds)})
    assert gts["0"] == ["a red circle then a blue square", "a red circle and a blue square"]
    cider, cider_per = Cider().compute_score(gts, res)
    assert agg["cider"] == pytest.approx(cider) and per == pytest.approx(list(cider_per))
    assert agg["cider"] == pytest.approx(4.852601262020447)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert [agg[f"bleu_{i}"] for i in range(1, 5)] == pytest.approx(bleu)
    assert agg["bleu_1"] == pytest.approx(15 / 16)      # 15 of 16 hypothesis words match
    assert agg["rouge_l"] == pytest.approx(Rouge().compute_score(gts, res)[0])
    assert "spice" not in agg or m.spice_available()


@pytest.mark.skipif(not m.java_available(), reason="METEOR needs a Java runtime")
def test_meteor_runs_through_java():
    agg, _ = m.caption(["a red circle"], [["a red circle"]])
    assert agg["meteor"] == pytest.approx(1.0, abs=0.01) or agg["meteor"] > 0.9


def test_accuracy_exact_and_contains():
    agg, per = m.accuracy(["Red.", "The red!", "it is red"], [["red"]] * 3)
    assert per == [1.0, 1.0, 0.0] and agg["accuracy"] == pytest.approx(2 / 3)
    _, per = m.accuracy(["it is red", "reddish", "red circle"], [["red"]] * 3, match="contains")
    assert per == [1.0, 0.0, 1.0]          # whole words only: "reddish" is not "red"
    with pytest.raises(ValueError, match="match"):
        m.accuracy(["a"], [["a"]], match="fuzzy")


@pytest.mark.parametrize("answer,expected", [
    ("B", 1), ("(b)", 1), ("B. blue", 1), ("blue", 1), ("The blue one.", 1), ("3", 2),
    ("The answer is C", 2), ("Answer: (a)", 0), ("a red thing", 0), ("red or blue", None),
    ("no idea", None), ("D", None), ("0", None)])
def test_pick_choice(answer, expected):
    assert m.pick_choice(answer, ["red", "blue", "green"]) == expected


def test_pick_choice_numbers_and_nested_options():
    assert m.pick_choice("1", ["2", "3", "4"]) is None       # options are numbers: no index
    assert m.pick_choice("3", ["2", "3", "4"]) == 1
    assert m.pick_choice("it is a red circle", ["red", "red circle"]) == 1
    assert m.pick_choice("A red circle", ["red circle", "blue square"]) == 0


def test_choice_accuracy_counts_unmatched_answers():
    agg, per = m.choice_accuracy(["(B)", "green", "red or blue", "A"], [["blue"]] * 4,
                                 [["red", "blue", "green"]] * 4)
    assert per == [1.0, 0.0, 0.0, 0.0]
    assert agg == {"accuracy": 0.25, "unmatched": 0.25}


def test_vqa_accuracy_consensus_leave_one_out():
    # Official VQA: 2 of 10 agree -> (8 * 2/3 + 2 * 1/3) / 10 = 0.6; 3 of 10 -> 0.9.
    answers = [["yes"] * 2 + ["no"] * 8, ["two"] * 3 + ["2"] * 7, ["cat"] * 10]
    agg, per = m.vqa_accuracy(["Yes", "two", "dog"], answers)
    assert per == pytest.approx([0.6, 0.9, 0.0])
    assert agg["vqa_accuracy"] == pytest.approx(0.5)
    assert m.vqa_accuracy(["x"], [["x"] * 10])[1] == [1.0]


def test_normalisers():
    assert m.normaliser("answer")("The Red, circle!") == "red circle"
    assert m.normaliser("whisper_en")("Twenty-five colours") == "25 colors"
    assert m.normaliser("none")("  As Is ") == "As Is"
    with pytest.raises(ValueError, match="unknown normaliser"):
        m.normaliser("mystery")
    assert math.isclose(m.wer(["a"], ["a"])[0]["wer"], 0.0)


def test_spice_jars_are_the_ones_spice_jar_loads():
    """spice-1.0.jar's manifest class path is what the JVM loads: both CoreNLP jars."""
    import os
    import zipfile

    from pycocoevalcap import spice

    jar = os.path.join(os.path.dirname(spice.__file__), "spice-1.0.jar")
    with zipfile.ZipFile(jar) as z:
        manifest = z.read("META-INF/MANIFEST.MF").decode().replace("\r\n ", "").replace("\n ", "")
    class_path = next(line for line in manifest.splitlines() if line.startswith("Class-Path:"))
    corenlp = {p.split("/")[-1] for p in class_path.split()[1:] if "corenlp" in p}
    assert corenlp == set(m.SPICE_JARS)


@pytest.mark.skipif(not m.java_available(), reason="the jars are looked at once Java is there")
def test_spice_needs_both_corenlp_jars(tmp_path):
    """Spice() downloads the code jar when it is absent (no network here): the models jar
    alone does not make SPICE available."""
    (tmp_path / "stanford-corenlp-3.6.0-models.jar").write_bytes(b"")
    why = m.spice_missing(str(tmp_path))
    assert why is not None and f"stanford-corenlp-3.6.0.jar not in {tmp_path}" in why
    (tmp_path / "stanford-corenlp-3.6.0.jar").write_bytes(b"")
    assert m.spice_missing(str(tmp_path)) is None


def test_caption_without_java_names_what_it_left_out(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))          # no java on this PATH
    skips = m.caption_skips()
    assert set(skips) == {"ptb_tokenizer", "meteor", "spice", "spider"}
    assert skips["ptb_tokenizer"].startswith("approximated: no Java runtime")
    assert "meteor" not in m.caption_skips(with_meteor=False)
    assert m.spice_missing(str(tmp_path)) == "SPICE needs a Java runtime (java not on PATH)"
    agg, _ = m.caption(["a red circle"], [["A red circle."]])
    assert agg["bleu_1"] == pytest.approx(1.0) and not {"meteor", "spice", "spider"} & set(agg)
