"""RULER's sample generators, rebuilt around a seeded ``random.Random`` and a tokenizer-aware size search.

Each generator turns a haystack *size* (essay words, noise sentences, distractor needles, listed words, coded
words or documents, depending on the task) and a seed into a :class:`Built` sample; :func:`fit_size` then finds
the largest size whose full prompt (chat template and answer prefix included), plus the tokens to generate when
RULER's accounting is used, still fits the target length. The logic follows NVIDIA/RULER
``scripts/data/synthetic/{niah,variable_tracking,common_words_extraction,freq_words_extraction,qa}.py``.

Deliberate differences from the official scripts, none of which changes what a task asks:

- one ``random.Random`` per sample (seeded from the benchmark seed, the task and the sample index) instead of
  the module-level ``random``/``numpy`` state, so that every sample is reproducible on its own;
- a size search per sample (gallop from the previous sample's size, then bisect) instead of one search per
  task followed by decrements, so that every sample lands within one haystack unit of the target;
- distractors never collide with what is asked: niah distractor keys/values differ from the real ones and no
  key or value occurs in the essay text; cwe few-shot words differ from the sample's words; vt variable names are
  unique (RULER re-draws duplicates but keeps them in the list);
- sentences are split with a regular expression instead of NLTK Punkt (no model download offline);
- vt's in-context example is drawn directly with random names and value instead of being generated once and
  string-replaced (``randomize_icl``), which could corrupt text when a name matched another substring;
- few-shot blocks (vt, cwe) use the bare task template and go inside the user turn, before the question,
  because the chat template is applied by the tokenizer rather than written into RULER's template string;
- cwe raises :class:`SampleError` when a length needs more distinct words than ``wonderwords`` has (about
  8,000: beyond ~128k tokens with SmolLM2's tokenizer), where RULER switches to a word list that is not available offline;
- fwe searches its word count by bisection instead of RULER's coarse linear scan (steps of length/32).
"""

from __future__ import annotations

import functools
import math
import random
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..base import SampleError
from ..common import essay_words, essays_text, split_sentences
from .constants import BASE_TASKS, DEPTHS, DOCUMENT_PROMPT, NEEDLE, NOISE


@dataclass
class Built:
    """A generated sample: the user turn, the answer prefix (appended after the generation prompt), the references."""

    user_text: str
    answer_prefix: str
    answers: list[str]
    info: dict[str, Any] = field(default_factory=dict)


# -- word lists --------------------------------------------------------------------------------------------------


@functools.cache
def _wonderwords(kind: str) -> tuple[str, ...]:
    from wonderwords import random_word

    return tuple(sorted(set(random_word._get_words_from_text_file(f"{kind}list.txt"))))


def nouns() -> tuple[str, ...]:
    return _wonderwords("noun")


def adjectives() -> tuple[str, ...]:
    return _wonderwords("adjective")


@functools.lru_cache(maxsize=1)
def cwe_words() -> tuple[str, ...]:
    """RULER's cwe vocabulary: the union of wonderwords' nouns, adjectives and verbs, sorted."""
    return tuple(sorted(set(nouns()) | set(adjectives()) | set(_wonderwords("verb"))))


# -- niah ---------------------------------------------------------------------------------------------------------


def _random_value(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "words":
        # RULER draws from the sorted list of all "adjective-noun" pairs; drawing both parts is the same
        # distribution without building the 6-million-entry list.
        return f"{rng.choice(adjectives())}-{rng.choice(nouns())}"
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown needle type {kind!r}; allowed: numbers, words, uuids")


def _fresh(rng: random.Random, kind: str, taken: set[str], forbidden_text: str = "") -> str:
    for _ in range(1000):
        value = _random_value(rng, kind)
        if value not in taken and (not forbidden_text or value not in forbidden_text):
            taken.add(value)
            return value
    raise SampleError(f"could not draw a fresh {kind} value")


def _essay_haystack(size: int) -> str:
    words = essay_words()
    if size <= len(words):
        return " ".join(words[:size])
    repeats = -(-size // len(words))
    return " ".join((words * repeats)[:size])


def _insert_at_depths(rng: random.Random, text: str, inserts: list[str]) -> str:
    """RULER's essay insertion: split into sentences, put each insert before the sentence at a depth drawn from
    :data:`DEPTHS` (sorted), join everything with spaces."""
    sentences = split_sentences(text)
    depths = rng.sample(DEPTHS, len(inserts))
    positions = [0] + sorted(int(len(sentences) * (d / 100)) for d in depths) + [len(sentences)]
    parts = []
    for i in range(1, len(positions)):
        parts.append(" ".join(sentences[positions[i - 1] : positions[i]]))
        if i - 1 < len(inserts):
            parts.append(inserts[i - 1])
    return " ".join(parts)


def build_niah(
    size: int,
    seed: int,
    type_haystack: str,
    type_needle_k: str,
    type_needle_v: str,
    num_needle_k: int,
    num_needle_v: int,
    num_needle_q: int,
) -> Built:
    """niah.py's ``generate_input_output``: ``size`` essay words, noise sentences or distractor needles."""
    rng = random.Random(seed)
    num_needle_k = max(num_needle_k, num_needle_q)
    forbidden = essays_text() if type_haystack == "essay" else ""
    taken_keys: set[str] = set()
    taken_values: set[str] = set()
    keys, values, needles = [], [], []
    for _ in range(num_needle_k):
        keys.append(_fresh(rng, type_needle_k, taken_keys, forbidden))
        value = []
        for _ in range(num_needle_v):
            value.append(_fresh(rng, type_needle_v, taken_values, forbidden))
            needles.append(NEEDLE.format(type_needle_v=type_needle_v, key=keys[-1], value=value[-1]))
        values.append(value)
    rng.shuffle(needles)

    if type_haystack == "essay":
        context = _insert_at_depths(rng, _essay_haystack(size), needles)
    else:
        if type_haystack == "noise":
            sentences = [NOISE] * size
        elif type_haystack == "needle":
            # Distractors: the same sentence with other keys and values (never the real ones).
            sentences = []
            for _ in range(size):
                key = _fresh(rng, type_needle_k, set(taken_keys))
                distractor = _fresh(rng, type_needle_v, set(taken_values))
                sentences.append(NEEDLE.format(type_needle_v=type_needle_v, key=key, value=distractor))
        else:
            raise ValueError(f"unknown haystack {type_haystack!r}; allowed: essay, noise, needle")
        indexes = sorted(rng.sample(range(size), len(needles)), reverse=True)
        for index, needle in zip(indexes, needles):
            sentences.insert(index, needle)
        context = "\n".join(sentences)

    indices = rng.sample(range(num_needle_k), num_needle_q)
    queries = [keys[i] for i in indices]
    answers = [a for i in indices for a in values[i]]
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]

    template = BASE_TASKS["niah"]["template"]
    prefix = BASE_TASKS["niah"]["answer_prefix"]
    type_v = type_needle_v
    if num_needle_q * num_needle_v == 1:
        # niah.py applies these replacements to the whole template string (task template + answer prefix).
        replacements = (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer"))
        for old, new in replacements:
            template = template.replace(old, new)
            prefix = prefix.replace(old, new)
        type_v = type_v[:-1]
    return Built(
        user_text=template.format(type_needle_v=type_v, context=context, query=query),
        answer_prefix=prefix.format(type_needle_v=type_v, query=query),
        answers=answers,
        info={"keys": keys, "values": values, "queries": queries},
    )


# -- variable tracking ----------------------------------------------------------------------------------------------


def _chains(rng: random.Random, num_chains: int, num_hops: int, name_len: int, value: str, taken: set[str]):
    names: list[str] = []
    while len(names) < num_chains * (num_hops + 1):
        name = "".join(rng.choices(string.ascii_uppercase, k=name_len))
        if name not in taken and name != "VAR":
            taken.add(name)
            names.append(name)
    variables, chains = [], []
    for c in range(num_chains):
        chain_vars = names[c * (num_hops + 1) : (c + 1) * (num_hops + 1)]
        variables.append(chain_vars)
        chain = [f"VAR {chain_vars[0]} = {value}"]
        chain += [f"VAR {chain_vars[j + 1]} = VAR {chain_vars[j]} " for j in range(num_hops)]
        chains.append(chain)
    return variables, chains


def _vt_text(rng: random.Random, size: int, chains: list[list[str]]) -> str:
    sentences = [NOISE] * size
    for chain in chains:
        positions = sorted(rng.sample(range(len(sentences)), len(chain)))
        for j, position in enumerate(positions):
            sentences.insert(position + j, chain[j])
    return "\n".join(sentences).replace(". \n", ".\n")


def _vt_icl(seed: int, size: int, num_chains: int, num_hops: int, avoid_value: str) -> str:
    """vt's in-context example: a chain of 3-letter names (at most 10 hops) in ``size`` noise sentences, with
    the bare template, the answer prefix and the answer, then a newline."""
    rng = random.Random(seed ^ 0x5EED)
    value = avoid_value
    while value == avoid_value:
        value = str(rng.randint(10000, 99998))
    hops = min(10, num_hops)
    variables, chains = _chains(rng, num_chains, hops, 3, value, set())
    template = BASE_TASKS["variable_tracking"]["template"] + BASE_TASKS["variable_tracking"]["answer_prefix"]
    text = template.format(context=_vt_text(rng, size, chains), query=value, num_v=hops + 1)
    return text + " " + " ".join(variables[0]) + "\n"


def vt_value(seed: int) -> str:
    """The value a vt sample's chain starts from (the first draw of the sample's generator)."""
    return str(random.Random(seed).randint(10000, 99998))


def vt_icl_text(size: int, seed: int, num_chains: int, num_hops: int) -> str:
    """The in-context example of the vt sample ``seed`` with ``size`` noise sentences (fitted to 500 tokens)."""
    return _vt_icl(seed, size, num_chains, num_hops, vt_value(seed))


def build_vt(
    size: int,
    seed: int,
    num_chains: int,
    num_hops: int,
    type_haystack: str = "noise",
    icl_size: int | None = None,
) -> Built:
    """variable_tracking.py: ``size`` noise sentences with the chain(s) hidden in them, after one answered
    in-context example of ``icl_size`` noise sentences (none when ``icl_size`` is None)."""
    if type_haystack != "noise":
        raise ValueError("only the noise haystack of the official vt configuration is implemented")
    rng = random.Random(seed)
    template = BASE_TASKS["variable_tracking"]["template"]
    prefix = BASE_TASKS["variable_tracking"]["answer_prefix"]
    value = str(rng.randint(10000, 99998))
    variables, chains = _chains(rng, num_chains, num_hops, 5, value, set())
    context = _vt_text(rng, size, chains)
    parts = []
    if icl_size is not None:
        parts.append(_vt_icl(seed, icl_size, num_chains, num_hops, value))
    parts.append(template.format(context=context, query=value, num_v=num_hops + 1))
    return Built(
        user_text="\n".join(parts),
        answer_prefix=prefix.format(num_v=num_hops + 1, query=value),
        answers=list(variables[0]),
        info={"value": value},
    )


# -- common words extraction ----------------------------------------------------------------------------------------


def _numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {word}" for i, word in enumerate(words))


def build_cwe(
    size: int,
    seed: int,
    freq_cw: int,
    freq_ucw: int,
    num_cw: int,
    target_length: int,
    num_fewshot: int = 1,
) -> Built:
    """common_words_extraction.py: ``size`` distinct words, the first ``num_cw`` repeated ``freq_cw`` times and
    the others ``freq_ucw`` times (6/1 and a smaller example below 4096 tokens), shuffled and numbered, after
    ``num_fewshot`` answered example(s)."""
    rng = random.Random(seed)
    words = cwe_words()
    small = target_length < 4096
    few_size, few_cw, few_ucw = (20, 3, 1) if small else (40, 10, 3)
    if size + num_fewshot * few_size > len(words):
        raise SampleError(
            f"cwe needs {size + num_fewshot * few_size} distinct words at {target_length} tokens; wonderwords has "
            f"{len(words)} (RULER then uses a larger English word list, not available offline)"
        )
    chosen = rng.sample(words, size + num_fewshot * few_size)
    main_words, few_words = chosen[:size], chosen[size:]

    def example(pool: list[str], cw: int, ucw: int) -> tuple[str, list[str]]:
        common, uncommon = pool[:num_cw], pool[num_cw:]
        listed = common * cw + uncommon * ucw
        rng.shuffle(listed)
        return _numbered(listed), common

    template = BASE_TASKS["common_words_extraction"]["template"]
    prefix = BASE_TASKS["common_words_extraction"]["answer_prefix"]
    shots = []
    for k in range(num_fewshot):
        context, answer = example(few_words[k * few_size : (k + 1) * few_size], few_cw, few_ucw)
        shots.append((template + prefix).format(context=context, query="") + " " + _numbered(answer))
    context, answer = example(main_words, *((6, 1) if small else (freq_cw, freq_ucw)))
    return Built(
        user_text="\n".join(shots) + "\n" + template.format(context=context, query=""),
        answer_prefix=prefix,
        answers=answer,
        info={"num_words": size},
    )


# -- frequent words extraction --------------------------------------------------------------------------------------


def zeta(alpha: float) -> float:
    """The Riemann zeta function for real ``alpha > 1`` (scipy.special.zeta in RULER): exact for 2, else
    Euler-Maclaurin summation, accurate to ~1e-15."""
    if alpha <= 1:
        raise ValueError(f"zeta needs alpha > 1, got {alpha}")
    if alpha == 2:
        return math.pi**2 / 6
    n = 20
    total = sum(k**-alpha for k in range(1, n))
    total += n ** (1 - alpha) / (alpha - 1) + 0.5 * n**-alpha
    # Bernoulli terms B2/2!, B4/4!, B6/6! of the Euler-Maclaurin tail.
    total += alpha * n ** (-alpha - 1) / 12
    total -= alpha * (alpha + 1) * (alpha + 2) * n ** (-alpha - 3) / 720
    total += alpha * (alpha + 1) * (alpha + 2) * (alpha + 3) * (alpha + 4) * n ** (-alpha - 5) / 30240
    return total


def fwe_vocab(seed: int, vocab_size: int, coded_wordlen: int = 6) -> list[str]:
    """fwe's vocabulary: ``vocab_size`` distinct random lower-case words, shuffled, the first replaced by '...'."""
    rng = random.Random(seed)
    vocab: set[str] = set()
    while len(vocab) < vocab_size:
        vocab.add("".join(rng.choices(string.ascii_lowercase, k=coded_wordlen)))
    ordered = sorted(vocab)
    rng.shuffle(ordered)
    ordered[0] = "..."
    return ordered


def fwe_counts(num_words: int, vocab_size: int, alpha: float) -> list[int]:
    """How often each vocabulary rank appears: ``int(num_words * k**-alpha / zeta(alpha))`` for k = 1..V."""
    z = zeta(alpha)
    return [int(num_words * (k**-alpha) / z) for k in range(1, vocab_size + 1)]


def build_fwe(size: int, seed: int, alpha: float, vocab_size: int, coded_wordlen: int = 6) -> Built:
    """freq_words_extraction.py: ``size`` words drawn with Zipf frequencies from a random coded vocabulary; the
    most frequent is the noise '...', the answers are the next three."""
    vocab = fwe_vocab(seed, vocab_size, coded_wordlen)
    counts = fwe_counts(size, vocab_size, alpha)
    sampled = [w for w, c in zip(vocab, counts) for _ in range(c)]
    random.Random(seed + 1).shuffle(sampled)
    template = BASE_TASKS["freq_words_extraction"]["template"]
    return Built(
        user_text=template.format(context=" ".join(sampled), query=""),
        answer_prefix=BASE_TASKS["freq_words_extraction"]["answer_prefix"],
        answers=vocab[1:4],
        info={"answer_counts": counts[1:4], "noise_count": counts[0]},
    )


# -- qa -------------------------------------------------------------------------------------------------------------


def build_qa(size: int, seed: int, qas: list[dict[str, Any]], docs: list[str], index: int) -> Built:
    """qa.py: question ``index`` with its gold document(s) among ``size`` documents (same-article paragraphs
    first for SQuAD, then random others; the pool is repeated when ``size`` exceeds it), shuffled."""
    rng = random.Random(seed)
    item = qas[index % len(qas)]
    gold = list(item["context"])
    more = list(item.get("more_context", []))
    if size < len(docs):
        if size - len(gold) > len(more):
            excluded = set(gold) | set(more)
            others = [i for i in range(len(docs)) if i not in excluded]
            picked = gold + more + rng.sample(others, max(0, size - len(gold) - len(more)))
        else:
            picked = gold + rng.sample(more, max(0, size - len(gold)))
        chosen = [docs[i] for i in picked]
    else:
        repeats = -(-size // len(docs))
        chosen = (list(docs) * repeats)[:size]
    rng.shuffle(chosen)
    context = "\n\n".join(DOCUMENT_PROMPT.format(i=i + 1, document=d) for i, d in enumerate(chosen))
    return Built(
        user_text=BASE_TASKS["qa"]["template"].format(context=context, query=item["query"]),
        answer_prefix=BASE_TASKS["qa"]["answer_prefix"],
        answers=list(item["outputs"]),
        info={"question_index": index % len(qas), "gold_documents": len(gold)},
    )


# -- size search ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fit:
    """The result of :func:`fit_size`: the haystack size, its token count, and tokens per haystack unit."""

    size: int
    tokens: int
    slope: float


def fit_size(
    count: Callable[[int], int],
    target: int,
    lowest: int,
    start: int | None = None,
    slope: float | None = None,
) -> Fit:
    """The largest size ``n >= lowest`` with ``count(n) <= target``, with ``count(n)``.

    ``count`` is the token count of the sample built with ``n`` haystack units; it grows about linearly with
    ``n`` (up to small wiggles from random insert positions). The search jumps near the answer with a linear
    prediction from ``start`` (a previous sample's size) and ``slope`` (tokens per unit; estimated when not
    given), then gallops to bracket the answer and bisects: 2-4 token counts per sample once ``start`` and
    ``slope`` come from the previous sample. Raises :class:`SampleError` when even ``lowest`` does not fit.
    """
    cache: dict[int, int] = {}

    def c(n: int) -> int:
        if n not in cache:
            cache[n] = count(n)
        return cache[n]

    if c(lowest) > target:
        raise SampleError(
            f"the smallest haystack ({lowest} units) already takes {c(lowest)} tokens > {target}"
        )
    n = max(lowest, start or lowest)
    for _ in range(2):  # two secant steps
        if not slope or slope <= 0:
            probe = n + max(16, n - lowest) if n == lowest else n
            slope = (c(probe) - c(lowest)) / max(probe - lowest, 1)
            if slope <= 0:
                break
        predicted = max(lowest, n + int((target - c(n)) / slope))
        if predicted == n:
            break
        n = predicted
        slope = None if n == lowest else (c(n) - c(lowest)) / (n - lowest)
    if c(n) <= target:
        good, step = n, 1
        while True:
            probe = good + step
            if c(probe) > target:
                bad = probe
                break
            good, step = probe, step * 2
    else:
        bad, step = n, 1
        while True:
            probe = max(lowest, bad - step)
            if c(probe) <= target:
                good = probe
                break
            bad, step = probe, step * 2
    while bad - good > 1:
        mid = (good + bad) // 2
        if c(mid) <= target:
            good = mid
        else:
            bad = mid
    final_slope = (c(good) - c(lowest)) / (good - lowest) if good > lowest else float(slope or 1.0)
    return Fit(good, c(good), final_slope)
