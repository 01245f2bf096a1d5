"""ROUGE-1 as Google's ``rouge_score`` computes it, for the Needle-in-a-Haystack score, without its dependencies.

The paper's NIAH code (zhzihao/QPruningKV ``run_needle_in_haystack.py``, from PyramidKV) scores a response with
``rouge_scorer.RougeScorer(['rouge1', 'rougeL'], use_stemmer=True).score(needle, response)['rouge1'].fmeasure``.
``rouge_score`` tokenizes by lower-casing, replacing every run of characters outside ``[a-z0-9]`` by a space and
splitting, and, with ``use_stemmer=True``, applies NLTK's Porter stemmer (its default ``NLTK_EXTENSIONS`` mode)
to tokens longer than three characters. Neither package is a dependency here, so both steps are reproduced:
:class:`PorterStemmer` follows ``nltk.stem.porter`` rule by rule.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_VALID_TOKEN = re.compile(r"^[a-z0-9]+$")


class PorterStemmer:
    """The Porter stemming algorithm with NLTK's extensions (``nltk.stem.porter.PorterStemmer()``)."""

    _VOWELS = frozenset("aeiou")
    _IRREGULAR = {
        "sky": ("sky", "skies"),
        "die": ("dying",),
        "lie": ("lying",),
        "tie": ("tying",),
        "news": ("news",),
        "inning": ("innings", "inning"),
        "outing": ("outings", "outing"),
        "canning": ("cannings", "canning"),
        "howe": ("howe",),
        "proceed": ("proceed",),
        "exceed": ("exceed",),
        "succeed": ("succeed",),
    }

    def __init__(self) -> None:
        self._pool = {form: stem for stem, forms in self._IRREGULAR.items() for form in forms}

    # -- predicates ---------------------------------------------------------------------------------------------

    def _is_consonant(self, word: str, i: int) -> bool:
        if word[i] in self._VOWELS:
            return False
        if word[i] == "y":
            return True if i == 0 else not self._is_consonant(word, i - 1)
        return True

    def _measure(self, stem: str) -> int:
        pattern = "".join("c" if self._is_consonant(stem, i) else "v" for i in range(len(stem)))
        return pattern.count("vc")

    def _positive_measure(self, stem: str) -> bool:
        return self._measure(stem) > 0

    def _contains_vowel(self, stem: str) -> bool:
        return any(not self._is_consonant(stem, i) for i in range(len(stem)))

    def _ends_double_consonant(self, word: str) -> bool:
        return len(word) >= 2 and word[-1] == word[-2] and self._is_consonant(word, len(word) - 1)

    def _ends_cvc(self, word: str) -> bool:
        if (
            len(word) >= 3
            and self._is_consonant(word, len(word) - 3)
            and not self._is_consonant(word, len(word) - 2)
            and self._is_consonant(word, len(word) - 1)
            and word[-1] not in "wxy"
        ):
            return True
        return len(word) == 2 and not self._is_consonant(word, 0) and self._is_consonant(word, 1)

    # -- rule machinery -----------------------------------------------------------------------------------------

    @staticmethod
    def _without(word: str, suffix: str) -> str:
        return word[: len(word) - len(suffix)] if suffix else word

    def _apply(self, word: str, rules) -> str:
        """The first rule whose suffix matches decides: replaced if its condition holds, else the word stays."""
        for suffix, replacement, condition in rules:
            if suffix == "*d" and self._ends_double_consonant(word):
                stem = word[:-2]
                return stem + replacement if condition is None or condition(stem) else word
            if word.endswith(suffix):
                stem = self._without(word, suffix)
                return stem + replacement if condition is None or condition(stem) else word
        return word

    # -- steps --------------------------------------------------------------------------------------------------

    def _step1a(self, word: str) -> str:
        if word.endswith("ies") and len(word) == 4:
            return self._without(word, "ies") + "ie"
        return self._apply(
            word, [("sses", "ss", None), ("ies", "i", None), ("ss", "ss", None), ("s", "", None)]
        )

    def _step1b(self, word: str) -> str:
        if word.endswith("ied"):
            return self._without(word, "ied") + ("ie" if len(word) == 4 else "i")
        if word.endswith("eed"):
            stem = self._without(word, "eed")
            return stem + "ee" if self._measure(stem) > 0 else word
        for suffix in ("ed", "ing"):
            if word.endswith(suffix):
                stem = self._without(word, suffix)
                if self._contains_vowel(stem):
                    break
        else:
            return word
        return self._apply(
            stem,
            [
                ("at", "ate", None),
                ("bl", "ble", None),
                ("iz", "ize", None),
                ("*d", stem[-1], lambda _s: stem[-1] not in "lsz"),
                ("", "e", lambda s: self._measure(s) == 1 and self._ends_cvc(s)),
            ],
        )

    def _step1c(self, word: str) -> str:
        return self._apply(word, [("y", "i", lambda s: len(s) > 1 and self._is_consonant(s, len(s) - 1))])

    def _step2(self, word: str) -> str:
        if word.endswith("alli") and self._positive_measure(self._without(word, "alli")):
            return self._step2(self._without(word, "alli") + "al")
        m = self._positive_measure
        rules = [
            ("ational", "ate", m),
            ("tional", "tion", m),
            ("enci", "ence", m),
            ("anci", "ance", m),
            ("izer", "ize", m),
            ("bli", "ble", m),
            ("alli", "al", m),
            ("entli", "ent", m),
            ("eli", "e", m),
            ("ousli", "ous", m),
            ("ization", "ize", m),
            ("ation", "ate", m),
            ("ator", "ate", m),
            ("alism", "al", m),
            ("iveness", "ive", m),
            ("fulness", "ful", m),
            ("ousness", "ous", m),
            ("aliti", "al", m),
            ("iviti", "ive", m),
            ("biliti", "ble", m),
            ("fulli", "ful", m),
            ("logi", "log", lambda _s: self._positive_measure(word[:-3])),
        ]
        return self._apply(word, rules)

    def _step3(self, word: str) -> str:
        m = self._positive_measure
        return self._apply(
            word,
            [
                ("icate", "ic", m),
                ("ative", "", m),
                ("alize", "al", m),
                ("iciti", "ic", m),
                ("ical", "ic", m),
                ("ful", "", m),
                ("ness", "", m),
            ],
        )

    def _step4(self, word: str) -> str:
        def m(s: str) -> bool:
            return self._measure(s) > 1

        suffixes = ("al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent")
        rules = [(s, "", m) for s in suffixes]
        rules.append(("ion", "", lambda s: self._measure(s) > 1 and s[-1] in "st"))
        rules += [(s, "", m) for s in ("ou", "ism", "ate", "iti", "ous", "ive", "ize")]
        return self._apply(word, rules)

    def _step5a(self, word: str) -> str:
        if word.endswith("e"):
            stem = self._without(word, "e")
            if self._measure(stem) > 1:
                return stem
            if self._measure(stem) == 1 and not self._ends_cvc(stem):
                return stem
        return word

    def _step5b(self, word: str) -> str:
        return self._apply(word, [("ll", "l", lambda _s: self._measure(word[:-1]) > 1)])

    def stem(self, word: str) -> str:
        stem = word.lower()
        if word in self._pool:
            return self._pool[stem]
        if len(word) <= 2:
            return stem
        for step in (
            self._step1a,
            self._step1b,
            self._step1c,
            self._step2,
            self._step3,
            self._step4,
            self._step5a,
            self._step5b,
        ):
            stem = step(stem)
        return stem


@functools.lru_cache(maxsize=1)
def _stemmer() -> PorterStemmer:
    return PorterStemmer()


@functools.lru_cache(maxsize=65536)
def _stem(token: str) -> str:
    return _stemmer().stem(token)


def tokenize(text: str, use_stemmer: bool = True) -> list[str]:
    """``rouge_score.tokenize.tokenize``: lower-case, non-alphanumerics to spaces, split, stem tokens of 4+ chars."""
    tokens = _NON_ALNUM.sub(" ", text.lower()).split()
    if use_stemmer:
        tokens = [_stem(t) if len(t) > 3 else t for t in tokens]
    return [t for t in tokens if _VALID_TOKEN.match(t)]


@dataclass(frozen=True)
class Score:
    precision: float
    recall: float
    fmeasure: float


def rouge1(target: str, prediction: str, use_stemmer: bool = True) -> Score:
    """ROUGE-1 of ``prediction`` against ``target`` (``RougeScorer(['rouge1'], use_stemmer).score(target, prediction)``):
    unigram overlap counts; precision over the prediction's unigrams, recall over the target's, F1 of both."""
    target_counts = Counter(tokenize(target, use_stemmer))
    prediction_counts = Counter(tokenize(prediction, use_stemmer))
    overlap = sum((target_counts & prediction_counts).values())
    precision = overlap / max(sum(prediction_counts.values()), 1)
    recall = overlap / max(sum(target_counts.values()), 1)
    fmeasure = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return Score(precision, recall, fmeasure)
