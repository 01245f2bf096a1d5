#!/usr/bin/env python
"""Head importance scores for HeadKV, from a needle-retrieval probe, for any model (CPU is enough for small ones).

HeadKV-R2's retrieval-reasoning estimate (Fu et al., ICLR 2025, Sec. 3.1, Eq. 2; reference code
``retrieval_head_detection_r2.py`` in FYYFU/HeadKV), on the Paul Graham essay haystack of the NIAH benchmark:

1. a *retrieval-reasoning needle* ``k = (r, c1, c2)`` is inserted into the essays at a (length, depth) cell
   (Kamradt's insertion, :class:`qpruning.benchmarks.niah.NeedleInAHaystack`): a reasoning step ``r`` (two ages)
   and two candidate answers, of which only ``c2`` answers the question (the younger one's favourite thing...);
2. the model reads ``context + "Based on the content of the book, Question: q\\nAnswer:"`` and decodes greedily,
   at most as many tokens as the answer has (as the reference code);
3. at each decoding step ``t`` and for every query head ``h``, the ``N`` positions that ``h`` attends to most
   (``N`` = the token length of ``c2`` in the prompt) are taken; each one that lies inside ``c2`` adds
   ``10 * a / (N * A)`` to the head's score (``a``: its attention weight, ``A``: the answer's token count):
   the head "copies" the correct answer, and heads that attend to the wrong candidate or elsewhere earn nothing;
4. a probe counts only if the model answered it (LongBench's QA F1 against the answer > ``--min-f1``, 50 as the
   reference); the file keeps, for every head ``"layer-head"``, the list of its per-probe scores, and HeadKV
   uses each list's mean.

``--probe retrieval`` uses Kamradt's plain retrieval needle instead (HeadKV-ER: retrieval examples, the R2
estimate); ``--probe all`` both. ``--teacher-forcing`` feeds the reference answer instead of the model's own
tokens and keeps every probe (for models too small to answer, e.g. the tiny random ones of the tests).

The result is a JSON file that ``pruner.head_scores=`` accepts (qpruning's format: the published mapping under
``"scores"`` plus metadata: the model, its geometry, the probes and their outcome, the command, the time)::

    python scripts/compute_head_scores.py --model smollm2_135m --out qpruning/head_scores/smollm2_135m.json
    python scripts/compute_head_scores.py --model tiny_llama --lengths 600 --depths 50 --teacher-forcing
    python scripts/compute_head_scores.py --model meta-llama/Meta-Llama-3-8B-Instruct --lengths 1000 4000 8000

``--model`` is a config name of ``conf/model/`` (``smollm2_135m``, ``tiny_llama``, ``llama3_8b_instruct``...),
a hub id, a local folder, or ``tiny:<architecture>``. Attention weights need eager attention, which the script
selects.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from qpruning.benchmarks.base import newline_token_ids, render_prompt, tokenize_prompt  # noqa: E402
from qpruning.benchmarks.longbench.metrics import qa_f1_score  # noqa: E402
from qpruning.benchmarks.niah import NEEDLE, QUESTION, NeedleInAHaystack  # noqa: E402
from qpruning.models import ModelSpec  # noqa: E402
from qpruning.pruners.headkv import SCORES_FORMAT  # noqa: E402
from qpruning.transformers_api import cache_kwargs, output_cache  # noqa: E402

logger = logging.getLogger("compute_head_scores")

# The prompt of the reference code (plain text, no chat template).
TEMPLATE = "{context}Based on the content of the book, Question: {question}\nAnswer:"


@dataclass(frozen=True)
class ProbeNeedle:
    """A needle, its question, the part of the needle that answers it (``real_needle``, ``c2``), and the answer."""

    id: str
    needle: str
    question: str
    real_needle: str
    answer: str


# Retrieval-reasoning needles in the form of HeadKV's Figure 2: a reasoning step (ages, heights, birth years)
# decides which of two candidate answers is right. The first is the paper's own example.
REASONING_NEEDLES = (
    ProbeNeedle(
        "r2-john-mary",
        "\nJohn is 12 years old. Mary is 13 years old. Mary's favorite thing is to take a walk in Chaoyang Park and "
        "have a cup of Espresso in the evening. John's favorite thing is to play basketball at the local gym and "
        "enjoy a smoothie afterward.\n",
        "What is the favorite thing of the younger one between John and Mary?",
        "John's favorite thing is to play basketball at the local gym and enjoy a smoothie afterward.",
        "play basketball at the local gym and enjoy a smoothie afterward",
    ),
    ProbeNeedle(
        "r2-alice-bob",
        "\nAlice is 170 centimeters tall. Bob is 182 centimeters tall. Alice likes to go hiking in the Blue "
        "Mountains on weekends. Bob likes to go fishing at Lake Tahoe with his old friends on weekends.\n",
        "What does the taller one between Alice and Bob like to do on weekends?",
        "Bob likes to go fishing at Lake Tahoe with his old friends on weekends.",
        "go fishing at Lake Tahoe with his old friends",
    ),
    ProbeNeedle(
        "r2-tom-lucy",
        "\nTom was born in 1985. Lucy was born in 1990. Lucy collects vintage postcards from small towns in Italy. "
        "Tom collects old silver coins from ancient Rome.\n",
        "What does the older one between Tom and Lucy collect?",
        "Tom collects old silver coins from ancient Rome.",
        "old silver coins from ancient Rome",
    ),
)
# Kamradt's needle (Wu et al.'s retrieval example), scored the same way: HeadKV-ER.
RETRIEVAL_NEEDLES = (
    ProbeNeedle(
        "retrieval-sf",
        NEEDLE,
        QUESTION,
        NEEDLE.strip(),
        "eat a sandwich and sit in Dolores Park on a sunny day",
    ),
)
PROBES = {"reasoning": REASONING_NEEDLES, "retrieval": RETRIEVAL_NEEDLES, "all": REASONING_NEEDLES + RETRIEVAL_NEEDLES}


def resolve_model(name: str) -> ModelSpec:
    """A :class:`ModelSpec` from a ``conf/model`` name, ``tiny:<arch>``, a hub id or a local folder."""
    config = REPO / "conf" / "model" / f"{name}.yaml"
    if config.is_file():
        from omegaconf import OmegaConf

        fields = OmegaConf.to_container(OmegaConf.load(config), resolve=True)
        fields.pop("_target_", None)
        spec = ModelSpec(**fields)
    elif name.startswith("tiny:"):
        spec = ModelSpec(name=f"tiny_{name.split(':', 1)[1]}", name_or_path=name, dtype="float32", device="cpu")
    else:
        spec = ModelSpec(name=Path(name.rstrip("/")).name, name_or_path=name)
    spec.attn_implementation = "eager"  # attention weights are read at every decoding step
    return spec


def find_span(prompt_ids: list[int], span_ids: list[int]) -> tuple[int, int]:
    """``[start, end)`` of ``span_ids`` in ``prompt_ids``: the exact occurrence if there is one (the last), else
    the window of the same length whose token set overlaps most (the reference's ``find_needle_idx``)."""
    n = len(span_ids)
    for start in range(len(prompt_ids) - n, -1, -1):
        if prompt_ids[start : start + n] == span_ids:
            return start, start + n
    wanted = set(span_ids)
    best, best_start = -1.0, 0
    for start in range(0, max(1, len(prompt_ids) - n + 1)):
        overlap = len(set(prompt_ids[start : start + n]) & wanted) / len(wanted)
        if overlap >= best:
            best, best_start = overlap, start
    return best_start, best_start + n


def span_in_prompt(tokenizer, prompt_ids: list[int], text: str) -> tuple[int, int]:
    """Where ``text`` (a sentence of the needle) sits in the prompt, trying its tokenizations with and without a
    leading space (BPE tokenizers merge the space into the first token)."""
    for variant in (text, " " + text, "\n" + text):
        ids = list(tokenizer(variant, add_special_tokens=False)["input_ids"])
        if variant != text:
            ids = ids[1:] if variant.startswith("\n") and len(ids) > 1 else ids
        n = len(ids)
        for start in range(len(prompt_ids) - n, -1, -1):
            if prompt_ids[start : start + n] == ids:
                return start, start + n
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return find_span(prompt_ids, ids)


@torch.no_grad()
def probe(
    model,
    tokenizer,
    prompt_ids: list[int],
    span: tuple[int, int],
    answer_ids: list[int],
    teacher_forcing: bool,
    max_new_tokens: int | None = None,
) -> tuple[torch.Tensor, list[int], float]:
    """One probe: per-head scores ``[layers, q_heads]`` (Eq. 2 as the reference code computes it), the generated
    (or forced) token ids, and the fraction of steps where the model's own greedy token was the forced one.

    Decoding runs for ``max_new_tokens`` steps (default: the answer's token count, as the reference code), stopping
    at a newline or EOS; with ``teacher_forcing`` it feeds the answer's tokens instead."""
    device = next(model.parameters()).device
    start, end = span
    n_span = end - start
    n_answer = max(1, len(answer_ids))
    stops = set(newline_token_ids(tokenizer))
    if tokenizer.eos_token_id is not None:
        stops.add(tokenizer.eos_token_id)
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    # Prefill all but the last prompt token; the last one is the first decoding step, whose attention counts
    # (it produces the first answer token), as in the reference code.
    out = model(input_ids=ids[:, :-1], use_cache=True, logits_to_keep=1)
    past = output_cache(out)
    token = ids[:, -1:]
    scores: torch.Tensor | None = None
    generated: list[int] = []
    matches = 0
    steps = n_answer if teacher_forcing or not max_new_tokens else max_new_tokens
    for step in range(steps):
        out = model(input_ids=token, **cache_kwargs(model, past), use_cache=True, output_attentions=True)
        past = output_cache(out)
        attention = torch.stack([a[0, :, -1].float() for a in out.attentions])  # [layers, q_heads, T]
        k = min(n_span, attention.shape[-1])
        values, index = attention.topk(k, dim=-1)
        inside = (index >= start) & (index < end)
        step_scores = 10.0 * (values * inside).sum(-1) / (n_span * n_answer)
        scores = step_scores if scores is None else scores + step_scores
        predicted = int(out.logits[0, -1].argmax())
        next_id = answer_ids[step] if teacher_forcing else predicted
        matches += int(predicted == next_id)
        generated.append(next_id)
        if not teacher_forcing and next_id in stops:
            break
        token = torch.tensor([[next_id]], dtype=torch.long, device=device)
    return scores.cpu(), generated, matches / max(1, len(generated))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="conf/model name, hub id, local folder or tiny:<arch>")
    parser.add_argument("--out", default=None, help="output JSON (default: qpruning/head_scores/<model name>.json)")
    parser.add_argument("--probe", choices=sorted(PROBES), default="reasoning", help="which needles (default: reasoning)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000, 2000], help="context lengths in tokens")
    parser.add_argument("--depths", type=float, nargs="+", default=[0, 25, 50, 75, 100], help="needle depths in %%")
    parser.add_argument("--min-f1", type=float, default=50.0, help="a probe counts if its answer's F1 x 100 exceeds this")
    parser.add_argument("--teacher-forcing", action="store_true", help="feed the reference answer; keep every probe")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="greedy decoding steps (default: the answer's token count, as the reference code)")
    parser.add_argument("--chat-template", action="store_true", help="wrap the prompt in the chat template")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the model config's)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the model config's)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = resolve_model(args.model)
    if args.device:
        spec.device = args.device
    if args.dtype:
        spec.dtype = args.dtype
    out = Path(args.out) if args.out else REPO / "qpruning" / "head_scores" / f"{spec.name}.json"
    started = time.time()
    model, tokenizer = spec.load()
    config = model.config
    layers, q_heads = config.num_hidden_layers, config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or q_heads
    logger.info("%s: %d layers, %d query heads, %d KV heads", spec.name, layers, q_heads, kv_heads)

    head_lists: dict[str, list[float]] = {f"{layer}-{head}": [] for layer in range(layers) for head in range(q_heads)}
    records = []
    for needle in PROBES[args.probe]:
        bench = NeedleInAHaystack(
            lengths=list(args.lengths), depths=list(args.depths), needle=needle.needle, question=needle.question,
            key_phrase=needle.answer, chat_template=args.chat_template,
        )
        haystack = bench.haystack_ids(tokenizer, max(args.lengths))
        # After "Answer:" the answer starts with a space; after a chat template's assistant header it does not.
        lead = "" if args.chat_template else " "
        answer_ids = list(tokenizer(lead + needle.answer, add_special_tokens=False)["input_ids"])
        for length in args.lengths:
            for depth in args.depths:
                context, _ = bench.insert_needle(tokenizer, haystack, length, depth)
                text = render_prompt(tokenizer, TEMPLATE.format(context=context, question=needle.question),
                                     args.chat_template)
                prompt_ids = tokenize_prompt(tokenizer, text, args.chat_template)
                span = span_in_prompt(tokenizer, prompt_ids, needle.real_needle)
                t0 = time.time()
                scores, generated, agreement = probe(
                    model, tokenizer, prompt_ids, span, answer_ids, args.teacher_forcing, args.max_new_tokens
                )
                response = tokenizer.decode(generated, skip_special_tokens=True).strip().split("\n")[0]
                f1 = 100.0 * qa_f1_score(response, needle.answer)
                used = args.teacher_forcing or f1 > args.min_f1
                if used:
                    for layer in range(layers):
                        for head in range(q_heads):
                            head_lists[f"{layer}-{head}"].append(round(float(scores[layer, head]), 6))
                records.append({
                    "needle": needle.id, "length": length, "depth": depth, "prompt_tokens": len(prompt_ids),
                    "span": list(span), "response": response, "f1": round(f1, 2), "used": used,
                    "greedy_agreement": round(agreement, 3),
                    "seconds": round(time.time() - t0, 2),
                })
                logger.info("%s L%d D%g: F1 %.1f%s %r", needle.id, length, depth, f1, "" if used else " (not used)",
                            response)
    used = sum(r["used"] for r in records)
    if used == 0:
        raise SystemExit(
            f"none of the {len(records)} probes was answered (F1 > {args.min_f1}): the scores would be empty. "
            "Try longer/other --lengths, --probe retrieval, a lower --min-f1, or --teacher-forcing."
        )
    result = {
        "format": SCORES_FORMAT,
        "method": "HeadKV retrieval-reasoning (R2) head scores" if args.probe == "reasoning" else f"HeadKV R2 estimate, {args.probe} needles",
        "model": spec.name,
        "name_or_path": spec.name_or_path,
        "num_layers": layers,
        "num_heads": q_heads,
        "num_kv_heads": kv_heads,
        "probe": args.probe,
        "needles": [asdict(n) for n in PROBES[args.probe]],
        "lengths": list(args.lengths),
        "depths": list(args.depths),
        "min_f1": args.min_f1,
        "teacher_forcing": args.teacher_forcing,
        "max_new_tokens": args.max_new_tokens,
        "chat_template": args.chat_template,
        "probes_used": used,
        "probes_total": len(records),
        "probes": records,
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO), *(argv or sys.argv[1:])]),
        "seconds": round(time.time() - started, 1),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip(),
        "device": str(next(model.parameters()).device),
        "torch": torch.__version__,
        "scores": head_lists,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    logger.info("wrote %s: %d of %d probes used, %.0f s", out, used, len(records), time.time() - started)
    return out


if __name__ == "__main__":
    main()
