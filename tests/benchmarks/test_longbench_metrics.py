"""LongBench's official metrics on tricky cases. Expected values are derived by hand from the official formulas
(THUDM/LongBench metrics.py / eval.py); the derivation is in the comment of each case."""

from __future__ import annotations

import math

import pytest

from qpruning.benchmarks.longbench import ALL_DATASETS, DATASET2MAXLEN, DATASET2PROMPT
from qpruning.benchmarks.longbench import metrics as m


def test_every_dataset_has_a_prompt_a_generation_length_and_a_metric():
    assert len(ALL_DATASETS) == 21
    assert set(DATASET2PROMPT) == set(ALL_DATASETS) == set(DATASET2MAXLEN) == set(m.dataset2metric)


def test_normalize_answer_lowercases_drops_punctuation_then_articles_and_collapses_spaces():
    # lower -> "the cat's  hat, a big one!" ; punctuation out -> "the cats  hat a big one" ;
    # articles -> " cats  hat  big one" ; whitespace -> "cats hat big one"
    assert m.normalize_answer("The Cat's  hat, a BIG one!") == "cats hat big one"
    # "anthem" keeps its "an": articles are whole words only
    assert m.normalize_answer("An anthem.") == "anthem"


def test_normalize_zh_answer_drops_chinese_and_ascii_punctuation_and_all_whitespace():
    assert m.normalize_zh_answer("你好，世界！ Hello.") == "你好世界hello"


def test_qa_f1_with_articles_punctuation_and_extra_words():
    # pred tokens: answer is paris france (4) ; gold: paris (1) ; overlap 1 -> P=1/4, R=1, F1=2*.25/(1.25)=0.4
    assert m.qa_f1_score("The answer is: Paris, France.", "Paris") == pytest.approx(0.4)
    # both normalize to nothing -> no overlap -> 0
    assert m.qa_f1_score("a", "The") == 0.0


def test_qa_f1_counts_repeated_tokens_once_per_occurrence():
    # pred: paris paris (2) ; gold: paris (1) ; overlap min(2,1)=1 -> P=1/2, R=1, F1=2/3
    assert m.qa_f1_score("Paris Paris", "Paris") == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "metric", [m.qa_f1_score, m.qa_f1_zh_score, m.rouge_score, m.rouge_zh_score, m.code_sim_score]
)
def test_empty_predictions_score_zero(metric):
    assert metric("", "Paris") == 0.0


def test_qa_f1_zh_segments_with_jieba_and_drops_punctuation_tokens():
    # jieba: 我爱北京 -> 我 / 爱 / 北京 ; gold 北京 -> P=1/3, R=1, F1=0.5
    assert m.qa_f1_zh_score("我爱北京", "北京") == pytest.approx(0.5)
    # 北京。 -> 北京 / 。 ; "。" normalizes to "" and is dropped -> exact match
    assert m.qa_f1_zh_score("北京", "北京。") == pytest.approx(1.0)


def test_rouge_l_is_the_rouge_package_summary_level_f():
    # The `rouge` package's ROUGE-L counts distinct LCS words: LCS words {the, cat, on, mat} = 4 over 5 distinct
    # words on each side -> P = R = F = 0.8 (minus its 1e-8 smoothing); not 5/6 as a sequence LCS would give.
    assert m.rouge_score("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(0.8, abs=1e-6)
    assert m.rouge_score("the cat sat", "") == 0.0  # the package raises on an empty reference: 0
    assert m.rouge_zh_score("我爱北京", "我爱北京") == pytest.approx(1.0, abs=1e-6)


def test_classification_score_splits_credit_between_named_classes():
    classes = ["Abbreviation", "Animal", "Description", "Entity"]
    # both Animal and Entity are named, the gold is one of them -> 1/2
    assert m.classification_score("Entity and Animal", "Animal", all_classes=classes) == 0.5


def test_classification_score_keeps_the_official_iterate_while_removing_quirk():
    classes = ["Manner", "Man", "Ma", "Other"]
    # matches [Manner, Man, Ma]; step 0 keeps Manner (== gold); step 1 removes Man (strict substring of the gold)
    # and "Ma" slides into slot 1, which was just visited -> never checked; matches [Manner, Ma] -> 1/2.
    assert m.classification_score("Manner Man Ma", "Manner", all_classes=classes) == 0.5


def test_classification_score_naming_no_class_is_zero_not_a_fuzzy_match():
    # The official difflib fall-back sits behind `em_match_list != 0`, always true for a list: dead code.
    assert m.classification_score("Mannr", "Manner", all_classes=["Manner", "Other"]) == 0.0


def test_retrieval_and_count_scores_share_credit_among_all_numbers():
    # numbers 3 and 13: one of two is the paragraph id -> 0.5 ; "13" does not count as "3"
    assert m.retrieval_score("Paragraph 3 or Paragraph 13", "Paragraph 3") == 0.5
    assert m.retrieval_score("The answer is 3", "Paragraph 3") == 1.0
    assert m.retrieval_score("no idea", "Paragraph 3") == 0.0
    assert m.retrieval_zh_score("答案是段落5", "段落5") == 1.0
    assert m.count_score("There are 12 unique paragraphs, not 13", "12") == 0.5
    assert m.count_score("", "3") == 0.0


def test_code_sim_score_uses_the_first_line_that_is_not_a_comment_or_fence():
    # "```python" has a backtick, "# comment" a hash: the first kept line is the code line, an exact match
    prediction = "\n```python\n# comment\n    return x + 1\n```"
    assert m.code_sim_score(prediction, "    return x + 1") == 1.0
    # "//" lines are skipped too, even when they hold code
    assert m.code_sim_score("x = a // 2\ny = 2", "y = 2") == 1.0
    # fuzz.ratio("abcd", "abce") = 2*3/8 = 75 -> 0.75
    assert m.code_sim_score("abcd", "abce") == 0.75
    # nothing but comments -> the empty string is compared -> 0
    assert m.code_sim_score("# only\n// comments", "y = 2") == 0.0


def test_scorer_cuts_few_shot_predictions_to_their_first_line():
    # triviaqa: "\n\nParis\nLondon..." -> lstrip newlines, first line "Paris" -> F1 with "London" = 0
    assert m.scorer("triviaqa", ["\n\nParis\nLondon is the answer"], [["London"]], None) == 0.0
    # narrativeqa is not cut: tokens paris london is answer (4) vs london (1) -> F1 0.4 -> 40.0
    assert m.scorer("narrativeqa", ["\n\nParis\nLondon is the answer"], [["London"]], None) == 40.0
    # trec: the class on the first line only
    classes = ["City", "Country"]
    assert m.scorer("trec", ["City\nCountry"], [["City"]], classes) == 100.0


def test_scorer_takes_the_max_over_references_and_reports_percent_rounded():
    assert m.scorer("narrativeqa", ["Paris"], [["London", "paris."]], None) == 100.0
    # passage_count: 1, 0 and 2/3 -> mean 0.5556 -> 55.56
    assert m.scorer("passage_count", ["3", "4", "3 3 4"], [["3"], ["3"], ["3"]], None) == 55.56


def test_scorer_e_buckets_by_length_with_strict_upper_bounds():
    lengths = [1000, 3999, 4000, 7999, 8000, 20000]
    predictions = ["a", "x", "a", "a", "x", "x"]
    scores = m.scorer_e("trec", predictions, [["a"]] * 6, lengths, ["a", "x"])
    # 0-4k: 1000 (1), 3999 (0) -> 50 ; 4-8k: 4000, 7999 -> 100 ; 8k+: 8000, 20000 -> 0
    assert scores == {"0-4k": 50.0, "4-8k": 100.0, "8k+": 0.0}
    empty = m.scorer_e("trec", ["a"], [["a"]], [100], ["a"])
    assert empty["0-4k"] == 100.0 and math.isnan(empty["8k+"])
