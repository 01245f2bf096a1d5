"""LongBench's official metrics, with the official names and signatures, reimplemented to give the same numbers.

Reference: THUDM/LongBench (v1) ``metrics.py`` and ``eval.py``. Each metric is
``metric(prediction, ground_truth, **kwargs) -> float`` on a 0-1 scale; :func:`scorer` and :func:`scorer_e` apply
eval.py's rules on top: predictions of trec/triviaqa/samsum/lsht are cut to their first line, the score of a
sample is the max over its references, and a dataset's score is the mean times 100, rounded to 2 decimals.

Quirks of the official code that are reproduced on purpose, because they change numbers:

- ``classification_score`` removes sub-string matches from the list it is iterating over, so after one removal
  the next element is skipped; and its difflib fall-back is dead code (it tests ``em_match_list != 0``, which is
  always true for a list), so a prediction naming no class scores 0.
- ``rouge_score`` returns 0 when the ``rouge`` package raises (an empty prediction or reference).
- ``code_sim_score`` scores the first line of the prediction that contains none of ``` ` ```, ``#``, ``//``
  (after stripping leading newlines), or the empty string when there is none.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

from fuzzywuzzy import fuzz
from rouge import Rouge

from .prompts import FIRST_LINE_DATASETS, LENGTH_BUCKETS, length_bucket


def _jieba_cut(text: str) -> list[str]:
    """jieba's accurate-mode segmentation, imported on first use (only the Chinese datasets need jieba)."""
    import jieba

    return list(jieba.cut(text, cut_all=False))


_CN_PUNCTUATION = "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
_EN_PUNCTUATION = frozenset(string.punctuation)
_ALL_PUNCTUATION = frozenset(string.punctuation + _CN_PUNCTUATION)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lower-case, drop ASCII punctuation, then the articles a/an/the, and collapse whitespace (SQuAD's rule)."""
    text = "".join(ch for ch in s.lower() if ch not in _EN_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def normalize_zh_answer(s: str) -> str:
    """Lower-case, drop ASCII and Chinese punctuation, and remove all whitespace."""
    text = "".join(ch for ch in s.lower() if ch not in _ALL_PUNCTUATION)
    return "".join(text.split())


def _digit_runs_matching(prediction: str, target: str) -> float:
    """The fraction of digit runs in ``prediction`` that equal ``target`` (0 when there are none)."""
    numbers = re.findall(r"\d+", prediction)
    if not numbers:
        return 0.0
    return float(sum(1 for n in numbers if n == str(target)) / len(numbers))


def count_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """passage_count: the share of the numbers in the prediction that equal the count."""
    return _digit_runs_matching(prediction, ground_truth)


def _paragraph_id(ground_truth: str, pattern: str) -> str:
    matches = re.findall(pattern, ground_truth)
    if not matches:
        raise ValueError(f"reference {ground_truth!r} names no paragraph (expected the pattern {pattern!r})")
    return matches[0]


def retrieval_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """passage_retrieval_en: the share of the numbers in the prediction that equal N of the reference 'Paragraph N'."""
    return _digit_runs_matching(prediction, _paragraph_id(ground_truth, r"Paragraph (\d+)"))


def retrieval_zh_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """passage_retrieval_zh: as :func:`retrieval_score`, with the reference '段落N'."""
    return _digit_runs_matching(prediction, _paragraph_id(ground_truth, r"段落(\d+)"))


def code_sim_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """lcc, repobench-p: fuzzywuzzy's ratio / 100 between the reference line and the first prediction line that
    is not a comment or a code fence (no ``` ` ```, ``#`` or ``//`` in it)."""
    first = ""
    for line in prediction.lstrip("\n").split("\n"):
        if "`" not in line and "#" not in line and "//" not in line:
            first = line
            break
    return fuzz.ratio(first, ground_truth) / 100


def classification_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """trec, lsht: 1/len(matches) when the reference class is among the classes named in the prediction.

    ``kwargs["all_classes"]`` lists the classes. A class that is a strict sub-string of the reference is dropped
    from the matches, with the official iterate-while-removing behaviour (see the module docstring).
    """
    all_classes = kwargs["all_classes"]
    matches = [name for name in all_classes if name in prediction]
    # Emulate ``for term in matches: ... matches.remove(term)``: the list iterator advances one index per step
    # whatever was removed, so the element that slides into the current slot is never looked at.
    index = 0
    while index < len(matches):
        term = matches[index]
        if term in ground_truth and term != ground_truth:
            matches.remove(term)
        index += 1
    if ground_truth in matches:
        return 1.0 / len(matches)
    return 0.0


def rouge_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """gov_report, qmsum, multi_news, samsum: ROUGE-L F1 of the ``rouge`` package (0 when it raises)."""
    try:
        scores = Rouge().get_scores([prediction], [ground_truth], avg=True)
    except Exception:  # the official code catches everything (empty hypothesis, empty reference...)
        return 0.0
    return scores["rouge-l"]["f"]


def rouge_zh_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """dureader, vcsum: :func:`rouge_score` on jieba-segmented text joined by spaces."""
    prediction = " ".join(_jieba_cut(prediction))
    ground_truth = " ".join(_jieba_cut(ground_truth))
    return rouge_score(prediction, ground_truth)


def f1_score(prediction: Sequence[str], ground_truth: Sequence[str], **kwargs) -> float:
    """Bag-of-tokens F1 between two token lists."""
    common = Counter(prediction) & Counter(ground_truth)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction)
    recall = num_same / len(ground_truth)
    return (2 * precision * recall) / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """English QA: :func:`f1_score` of the whitespace tokens of the normalized answers."""
    return f1_score(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def qa_f1_zh_score(prediction: str, ground_truth: str, **kwargs) -> float:
    """Chinese QA: :func:`f1_score` of jieba tokens, each normalized, empty ones dropped."""
    pred_tokens = [normalize_zh_answer(t) for t in _jieba_cut(prediction)]
    gt_tokens = [normalize_zh_answer(t) for t in _jieba_cut(ground_truth)]
    return f1_score([t for t in pred_tokens if t], [t for t in gt_tokens if t])


dataset2metric: dict[str, Callable[..., float]] = {
    "narrativeqa": qa_f1_score,
    "qasper": qa_f1_score,
    "multifieldqa_en": qa_f1_score,
    "multifieldqa_zh": qa_f1_zh_score,
    "hotpotqa": qa_f1_score,
    "2wikimqa": qa_f1_score,
    "musique": qa_f1_score,
    "dureader": rouge_zh_score,
    "gov_report": rouge_score,
    "qmsum": rouge_score,
    "multi_news": rouge_score,
    "vcsum": rouge_zh_score,
    "trec": classification_score,
    "triviaqa": qa_f1_score,
    "samsum": rouge_score,
    "lsht": classification_score,
    "passage_retrieval_en": retrieval_score,
    "passage_count": count_score,
    "passage_retrieval_zh": retrieval_zh_score,
    "lcc": code_sim_score,
    "repobench-p": code_sim_score,
}


def first_line(prediction: str) -> str:
    """eval.py's cut for trec/triviaqa/samsum/lsht: leading newlines stripped, then the first line."""
    return prediction.lstrip("\n").split("\n")[0]


def sample_score(dataset: str, prediction: str, ground_truths: Sequence[str], all_classes=None) -> float:
    """One sample's score on a 0-1 scale, as eval.py computes it inside ``scorer``: first-line cut where the
    dataset asks for it, then the max of the metric over the references (0 when there is none)."""
    if dataset in FIRST_LINE_DATASETS:
        prediction = first_line(prediction)
    metric = dataset2metric[dataset]
    score = 0.0
    for ground_truth in ground_truths:
        score = max(score, metric(prediction, ground_truth, all_classes=all_classes))
    return score


def scorer(dataset: str, predictions: Sequence[str], answers: Sequence[Sequence[str]], all_classes) -> float:
    """eval.py's ``scorer``: the dataset's score, 100 x the mean sample score, rounded to 2 decimals."""
    total = sum(sample_score(dataset, p, refs, all_classes) for p, refs in zip(predictions, answers))
    return round(100 * total / len(predictions), 2)


def scorer_e(
    dataset: str,
    predictions: Sequence[str],
    answers: Sequence[Sequence[str]],
    lengths: Sequence[int],
    all_classes,
) -> dict[str, float]:
    """eval.py's ``scorer_e`` (LongBench-E): the score of each length bucket ``0-4k``, ``4-8k``, ``8k+``
    (``length`` < 4000, < 8000, else), 100 x the mean, rounded to 2 decimals; NaN for an empty bucket."""
    buckets: dict[str, list[float]] = {key: [] for key in LENGTH_BUCKETS}
    for prediction, refs, length in zip(predictions, answers, lengths):
        buckets[length_bucket(length)].append(sample_score(dataset, prediction, refs, all_classes))
    return {key: round(100 * sum(v) / len(v), 2) if v else math.nan for key, v in buckets.items()}
