"""Speed and usefulness of the embedded ``extractive`` generator.

Speed: ten passages of ~256 tokens (PubMedQA paragraphs, cut with ``truncate_to_tokens``),
a real question; milliseconds for the whole answer and to its first piece (median, p95),
and CPU milliseconds (which a busy machine inflates less than wall-clock time).

Usefulness: PubMedQA PQA-L (../shared/eval/qa/pubmedqa/questions.jsonl). Each question's own
``contexts`` (background, methods, results of an abstract) are the passages, in their order;
the reference is the abstract's ``long_answer`` (its conclusion, which is NOT among the
contexts, so no method can copy it). ROUGE-1 recall / precision / F1 of the answer against
it, on all words and on content words (stop words removed), compared with baselines that
ignore the question: the first 3 sentences of the passages (lead-3; in PubMedQA the first
paragraph is the background and objective, which the conclusion restates: a strong
baseline), the last 3, and the extractive answer's own length taken from the start
(lead-same-length); and with an oracle that reads the reference (oracle-3, the ceiling).
``answers_with_results_sentence``: of the questions whose abstract has a RESULTS paragraph,
how many answers quote at least one of its sentences (the finding, not the set-up).
Markers, "…" and the lead-in are removed before scoring. Questions 0..99 are reported (``--offset``/``--count`` to change); the generator's
constants were chosen on questions 100..299, never on the reported ones.

A second run adds 5 other questions' paragraphs as distractors and shuffles the order (so
the rank prior cannot help): ``own_share`` is how many chosen sentences come from the
question's own paragraphs. The baselines see the same shuffled passages.

    .venv/bin/python bench/extractive.py [--offset 0] [--count 100] [--no-write]

Writes bench/results/extractive.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spacio.rag.builtins.extractive import _STOPWORDS, ExtractiveGenerator, split_sentences  # noqa: E402
from spacio.rag.contracts import Passage, Prompt  # noqa: E402
from spacio.rag.prompts import estimate_tokens, truncate_to_tokens  # noqa: E402

QUESTIONS = ROOT.parent / "shared" / "eval" / "qa" / "pubmedqa" / "questions.jsonl"
RESULTS = ROOT / "bench" / "results" / "extractive.json"
_WORDS = re.compile(r"\w+")
_MARKERS = re.compile(r"\[\d+(?:,\s*\d+)*\]")


def load():
    with open(QUESTIONS, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def passages(texts):
    return tuple(Passage(n=i + 1, text=t, chunk_id=f"c{i}", document_id=f"d{i}") for i, t in enumerate(texts))


def words(text, content=False):
    out = [w.lower() for w in _WORDS.findall(text)]
    return [w for w in out if w not in _STOPWORDS] if content else out


def rouge1(candidate, reference, content=False):
    cand, ref = Counter(words(candidate, content)), Counter(words(reference, content))
    overlap = sum((cand & ref).values())
    recall = overlap / max(1, sum(ref.values()))
    precision = overlap / max(1, sum(cand.values()))
    f1 = 2 * recall * precision / (recall + precision) if overlap else 0.0
    return recall, precision, f1


def oracle(sentences, reference, k=3):
    """The upper bound of picking k sentences: greedily the ones that raise content-word
    ROUGE-1 F1 against the reference most (it reads the reference; no method can)."""
    chosen = []
    for _ in range(k):
        best = max((s for s in sentences if s not in chosen),
                   key=lambda s: rouge1(" ".join(chosen + [s]), reference, content=True)[2], default=None)
        if best is None:
            break
        chosen.append(best)
    return " ".join(chosen)


def plain(answer):
    answer = answer.replace(ExtractiveGenerator.LEAD_IN_INDIRECT, "")
    return _MARKERS.sub("", answer).replace("…", " ")


def summarise(rows):
    keys = rows[0].keys()
    return {k: round(statistics.fmean(r[k] for r in rows), 4) for k in keys}


def usefulness(items, generator, distractors=0, seed=7):
    rng = random.Random(seed)
    pool = [c for item in load() for c in item["contexts"]]
    systems = {"extractive": [], "lead-3": [], "last-3": [], "lead-same-length": [], "oracle-3": []}
    lengths, direct, own = [], 0, []
    finding, with_results = Counter(), 0
    for item in items:
        texts = list(item["contexts"])
        own_texts = set(texts)
        results = {t for t, label in zip(item["contexts"], item["context_labels"]) if "RESULT" in label.upper()}
        if distractors:
            texts += rng.sample([c for c in pool if c not in own_texts], distractors)
            rng.shuffle(texts)
        prompt = Prompt(question=item["question"], passages=passages(texts))
        answer = "".join(p for p in generator.stream(prompt) if isinstance(p, str))
        chosen = generator.select(prompt)
        direct += chosen.direct
        own.extend(texts[s.passage] in own_texts for s in chosen.sentences)
        # the baselines see the same passages in the same order as the generator
        origin = [(s, t) for t in texts for s in split_sentences(t)]
        sentences = [s for s, _ in origin]
        if results:  # does the answer include the study's results (a RESULTS paragraph)?
            with_results += 1
            finding["extractive"] += any(texts[s.passage] in results for s in chosen.sentences)
            finding["lead-3"] += any(t in results for _, t in origin[:3])
            finding["last-3"] += any(t in results for _, t in origin[-3:])
        candidates = {
            "extractive": plain(answer),
            "lead-3": " ".join(sentences[:3]),
            "last-3": " ".join(sentences[-3:]),
            "lead-same-length": " ".join(texts)[: len(plain(answer))],
            "oracle-3": oracle(sentences, item["long_answer"]),
        }
        lengths.append(len(words(plain(answer))))
        for name, text in candidates.items():
            r, p, f = rouge1(text, item["long_answer"])
            cr, cp, cf = rouge1(text, item["long_answer"], content=True)
            systems[name].append({"recall": r, "precision": p, "f1": f,
                                  "content_recall": cr, "content_precision": cp, "content_f1": cf})
    out = {name: summarise(rows) for name, rows in systems.items()}
    out["answer_words_mean"] = round(statistics.fmean(lengths), 1)
    out["reference_words_mean"] = round(statistics.fmean(len(words(i["long_answer"])) for i in items), 1)
    out["direct_share"] = round(direct / len(items), 3)
    out["answers_with_results_sentence"] = {k: round(v / max(1, with_results), 3) for k, v in finding.items()}
    if distractors:
        out["own_share"] = round(sum(own) / max(1, len(own)), 3)
    return out


def latency(generator, runs=200):
    items = load()
    texts = []
    for item in items:
        long = " ".join(c for i in items[len(texts) * 3:len(texts) * 3 + 3] for c in i["contexts"])
        texts.append(truncate_to_tokens(long, 256))
        if len(texts) == 10:
            break
    prompt = Prompt(question=items[0]["question"], passages=passages(texts))
    whole, first, cpu = [], [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        pieces = generator.stream(prompt)
        next(pieces)
        first.append((time.perf_counter() - start) * 1000)
        for _ in pieces:
            pass
        whole.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    q = statistics.quantiles
    return {"passages": 10, "tokens_per_passage": [estimate_tokens(t) for t in texts], "runs": runs,
            "whole_ms_p50": round(statistics.median(whole), 2), "whole_ms_p95": round(q(whole, n=20)[18], 2),
            "first_piece_ms_p50": round(statistics.median(first), 2),
            "cpu_ms_mean": round(statistics.fmean(cpu), 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    generator = ExtractiveGenerator()
    items = load()[args.offset: args.offset + args.count]
    result = {
        "generator": repr(generator),
        "questions": f"pubmedqa questions.jsonl [{args.offset}:{args.offset + args.count}]",
        "latency": latency(generator),
        "own_contexts": usefulness(items, generator),
        "with_5_distractors_shuffled": usefulness(items, generator, distractors=5),
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=2))
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
