"""RULER's templates and task configurations (NVIDIA/RULER).

Sources:

- ``scripts/data/synthetic/constants.py``: :data:`BASE_TASKS` (template, answer prefix, tokens to generate);
- ``scripts/synthetic.yaml``: :data:`TASKS`, the 13 tasks and their arguments;
- ``scripts/data/synthetic/niah.py``, ``variable_tracking.py``, ``qa.py``: :data:`NEEDLE`, :data:`NOISE`,
  :data:`DOCUMENT_PROMPT`, :data:`DEPTHS`;
- ``scripts/eval/synthetic/constants.py``: which metric scores which base task (:data:`BASE_TASK_METRIC`).
"""

from __future__ import annotations

from typing import Any

BASE_TASKS: dict[str, dict[str, Any]] = {
    "niah": {
        "tokens_to_generate": 128,
        "template": "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic {type_needle_v} for {query} mentioned in the provided text?",
        "answer_prefix": " The special magic {type_needle_v} for {query} mentioned in the provided text are",
    },
    "variable_tracking": {
        "tokens_to_generate": 30,
        "template": "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\nQuestion: Find all variables that are assigned the value {query} in the text above.",
        "answer_prefix": " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are assigned the value {query}, they are: ",
    },
    "common_words_extraction": {
        "tokens_to_generate": 120,
        "template": "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?",
        "answer_prefix": " Answer: The top 10 words that appear most often in the list are:",
    },
    "freq_words_extraction": {
        "tokens_to_generate": 50,
        "template": "Read the following coded text and track the frequency of each coded word. Find the three most frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most frequently appeared words in the above coded text?",
        "answer_prefix": " Answer: According to the coded text above, the three most frequently appeared words are:",
    },
    "qa": {
        "tokens_to_generate": 32,
        "template": "Answer the question based on the given documents. Only give me the answer and do not output any other words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}",
        "answer_prefix": " Answer:",
    },
}

TASKS: dict[str, dict[str, Any]] = {
    "niah_single_1": {"task": "niah", "args": {"type_haystack": "noise", "type_needle_k": "words", "type_needle_v": "numbers", "num_needle_k": 1, "num_needle_v": 1, "num_needle_q": 1}},
    "niah_single_2": {"task": "niah", "args": {"type_haystack": "essay", "type_needle_k": "words", "type_needle_v": "numbers", "num_needle_k": 1, "num_needle_v": 1, "num_needle_q": 1}},
    "niah_single_3": {"task": "niah", "args": {"type_haystack": "essay", "type_needle_k": "words", "type_needle_v": "uuids", "num_needle_k": 1, "num_needle_v": 1, "num_needle_q": 1}},
    "niah_multikey_1": {"task": "niah", "args": {"type_haystack": "essay", "type_needle_k": "words", "type_needle_v": "numbers", "num_needle_k": 4, "num_needle_v": 1, "num_needle_q": 1}},
    "niah_multikey_2": {"task": "niah", "args": {"type_haystack": "needle", "type_needle_k": "words", "type_needle_v": "numbers", "num_needle_k": 1, "num_needle_v": 1, "num_needle_q": 1}},
    "niah_multikey_3": {"task": "niah", "args": {"type_haystack": "needle", "type_needle_k": "uuids", "type_needle_v": "uuids", "num_needle_k": 1, "num_needle_v": 1, "num_needle_q": 1}},
    "niah_multivalue": {"task": "niah", "args": {"type_haystack": "essay", "type_needle_k": "words", "type_needle_v": "numbers", "num_needle_k": 1, "num_needle_v": 4, "num_needle_q": 1}},
    "niah_multiquery": {"task": "niah", "args": {"type_haystack": "essay", "type_needle_k": "words", "type_needle_v": "numbers", "num_needle_k": 1, "num_needle_v": 1, "num_needle_q": 4}},
    "vt": {"task": "variable_tracking", "args": {"type_haystack": "noise", "num_chains": 1, "num_hops": 4}},
    "cwe": {"task": "common_words_extraction", "args": {"freq_cw": 30, "freq_ucw": 3, "num_cw": 10}},
    "fwe": {"task": "freq_words_extraction", "args": {"alpha": 2.0}},
    "qa_1": {"task": "qa", "args": {"dataset": "squad"}},
    "qa_2": {"task": "qa", "args": {"dataset": "hotpotqa"}},
}  # fmt: skip

ALL_TASKS: tuple[str, ...] = tuple(TASKS)
QA_TASKS: tuple[str, ...] = ("qa_1", "qa_2")
PAPER_TASKS: tuple[str, ...] = tuple(t for t in ALL_TASKS if t not in QA_TASKS)
"""The 11 synthetic tasks of the paper's own ``run_ruler.py`` (zhzihao/QPruningKV), which leaves out qa_1/qa_2."""

# niah.py
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
# np.round(np.linspace(0, 100, num=40, endpoint=True)).astype(int), written out.
DEPTHS: tuple[int, ...] = (
    0, 3, 5, 8, 10, 13, 15, 18, 21, 23, 26, 28, 31, 33, 36, 38, 41, 44, 46, 49,
    51, 54, 56, 59, 62, 64, 67, 69, 72, 74, 77, 79, 82, 85, 87, 90, 92, 95, 97, 100,
)  # fmt: skip

# qa.py
DOCUMENT_PROMPT = "Document {i}:\n{document}"

BASE_TASK_METRIC: dict[str, str] = {
    "niah": "string_match_all",
    "variable_tracking": "string_match_all",
    "common_words_extraction": "string_match_all",
    "freq_words_extraction": "string_match_all",
    "qa": "string_match_part",
}
