"""Throughput of the local embedder (spacio-minilm) on real abstracts.

Embeds a fixed sample of SciFact abstracts (../shared/eval/retrieval/scifact/corpus.jsonl,
title + abstract; most are longer than the model's 256 tokens, like the host's 256-token
chunks) the way the host does: calls of ``max_batch_size`` texts to ``embed_documents``.
Settings: intra-op threads x texts per onnxruntime run (fixed batch sizes, bucketed by
length or in input order, and the plugin's default: runs sized by a padded-token budget).
Each setting runs in a fresh process, so peak RSS and first-load time are its own. Also
times single queries (SciFact claims).

Prints a table and writes bench/results/embedder.json. Not a test: numbers, not asserts.
Wall-clock numbers need an otherwise idle machine; each run records the load average and
its CPU time, and passages per CPU-second stays comparable when the machine is busy.

    .venv/bin/python bench/embedder.py [--passages 1000] [--batch-sizes 1 8 16 32] [--budgets 256 512]
                                       [--threads 1 2]
"""

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "eval" / "retrieval" / "scifact" / "corpus.jsonl"
QUERIES = ROOT.parent / "shared" / "eval" / "retrieval" / "scifact" / "queries.jsonl"


def rss_mib() -> float:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def current_rss_mib() -> float | None:
    """Resident set size now (after the run), or None off Linux."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def sample(path: Path, n: int, seed: int = 0) -> list[str]:
    """n abstracts picked with a fixed seed, so every run embeds the same texts."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    texts = [(r.get("title", "") + " " + r["text"]).strip() for r in rows]
    if n >= len(texts):
        return texts
    return [texts[i] for i in sorted(random.Random(seed).sample(range(len(texts)), n))]


def worker(args) -> dict:
    """One setting, in this (fresh) process."""
    start = time.perf_counter()
    from spacio_minilm import MiniLMEmbedder
    import_s = time.perf_counter() - start
    texts = sample(CORPUS, args.passages)
    baseline = rss_mib()
    if args.batch_tokens:  # the plugin's own policy: runs of at most batch_tokens padded tokens
        embedder = MiniLMEmbedder(batch_tokens=args.batch_tokens, threads=args.threads)
    else:  # a fixed number of texts per run, whatever their length
        embedder = MiniLMEmbedder(batch_size=args.batch_size, batch_tokens=10 ** 6, threads=args.threads,
                                  bucketed=args.bucketed)
    start = time.perf_counter()
    embedder.embed_query("warm up: loads the tokenizer and the onnxruntime session")
    first_load_s = time.perf_counter() - start
    after_load = rss_mib()

    call = embedder.max_batch_size
    tokens = 0
    load_before = os.getloadavg()[0]
    cpu = time.process_time()
    start = time.perf_counter()
    for i in range(0, len(texts), call):
        tokens += embedder.embed_documents(texts[i:i + call]).tokens
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu

    result = {
        "threads": args.threads, "batch": f"{args.batch_tokens} tokens" if args.batch_tokens else args.batch_size,
        "bucketed": args.bucketed,
        "passages": len(texts), "seconds": round(elapsed, 2),
        "passages_per_s": round(len(texts) / elapsed, 1), "tokens_per_s": round(tokens / elapsed),
        "tokens": tokens, "cpu_s": round(cpu, 2), "passages_per_cpu_s": round(len(texts) / cpu, 1),
        "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "import_s": round(import_s, 3), "first_load_s": round(first_load_s, 3),
        "rss_mib": {"before_load": baseline, "after_load": after_load, "peak": rss_mib(),
                    "end": current_rss_mib()},
    }
    if args.queries:
        queries = [json.loads(line)["text"] for line in QUERIES.read_text(encoding="utf-8").splitlines()]
        samples = []
        for q in queries[:args.queries]:
            start = time.perf_counter()
            embedder.embed_query(q)
            samples.append((time.perf_counter() - start) * 1000)
        samples.sort()
        result["query_ms"] = {"n": len(samples), "p50": round(statistics.median(samples), 2),
                              "p99": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 2)}
    return result


def installed_mib() -> dict:
    """On-disk size of spacio-minilm and everything it pulls in that spacio itself does not."""
    def closure(name, seen):
        key = name.lower().replace("_", "-")
        if key in seen:
            return
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            return
        seen[key] = dist
        for requirement in dist.requires or []:
            if "extra ==" in requirement:
                continue
            closure(requirement.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0]
                    .split("!")[0].split("~")[0].strip(), seen)

    theirs, ours = {}, {}
    closure("spacio-minilm", theirs)
    closure("spacio", ours)
    sizes = {}
    for key, dist in theirs.items():
        if key in ours:
            continue
        sizes[key] = round(sum((f.size or 0) for f in dist.files or []) / 2 ** 20, 1)
    return {"total": round(sum(sizes.values()), 1), "by_package": dict(sorted(sizes.items(), key=lambda kv: -kv[1]))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, default=1000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--budgets", type=int, nargs="*", default=[256, 512],
                        help="padded tokens per run (the plugin's batch_tokens), bucketed")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--queries", type=int, default=200, help="single queries timed per thread count")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs already in bench/results/embedder.json, run only the missing settings")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch-tokens", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--bucketed", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.threads, args.bucketed = args.threads[0], bool(args.bucketed)
        print(json.dumps(worker(args)))
        return

    runs = []
    out = ROOT / "bench" / "results" / "embedder.json"
    if args.resume and out.exists():
        runs = [r for r in json.loads(out.read_text())["runs"] if r["passages"] == args.passages]
    done = {(r["threads"], str(r["batch"]), r["bucketed"]) for r in runs}
    for threads in args.threads:
        settings = [(["--batch-tokens", str(b)], f"{b} tokens", True) for b in args.budgets]
        for size in args.batch_sizes:
            # with one text per run there is no padding: bucketing cannot change anything
            for bucketed in ([1] if size == 1 else [1, 0]):
                settings.append((["--batch-size", str(size), "--bucketed", str(bucketed)], size, bool(bucketed)))
        for i, (flags, batch, bucketed) in enumerate(settings):
            if (threads, str(batch), bucketed) in done:
                continue
            command = [sys.executable, __file__, "--worker", "--passages", str(args.passages),
                       "--threads", str(threads), "--queries", str(args.queries if i == 0 else 0), *flags]
            result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
            if result.returncode != 0:
                print(f"threads={threads} batch={batch} bucketed={bucketed}: failed "
                      f"(exit {result.returncode}): {result.stderr.strip()[-500:]}", flush=True)
                continue
            run = json.loads(result.stdout.splitlines()[-1])
            runs.append(run)
            print(f"threads={threads} batch={batch!s:<10} bucketed={bucketed!s:<5} "
                  f"{run['passages_per_s']:>6} passages/s {run['tokens_per_s']:>7} tokens/s "
                  f"peak {run['rss_mib']['peak']:>6} MiB", flush=True)
            write(out, report(runs))  # after every run: a benchmark stopped midway keeps its numbers
    if not runs:
        sys.exit("no run succeeded")
    print_table(runs)
    print(f"installed: {report(runs)['installed_mib']['total']} MiB beyond spacio's own dependencies")
    print(f"wrote {out.relative_to(ROOT)}")


def report(runs: list[dict]) -> dict:
    best = max(runs, key=lambda r: r["passages_per_s"])
    return {
        "benchmark": "embedder",
        "embedder": "spacio-minilm (all-MiniLM-L6-v2 int8 onnx)",
        "corpus": f"SciFact abstracts, fixed sample of {runs[0]['passages']} (title + abstract)",
        "call_size": "max_batch_size texts per embed_documents call, as the host sends them",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "installed_mib": installed_mib(),
        "best": {k: best[k] for k in ("threads", "batch", "bucketed", "passages_per_s", "tokens_per_s")},
        "runs": runs,
    }


def write(out: Path, data: dict) -> None:
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")


def print_table(runs: list[dict]) -> None:
    print()
    print(f"{'threads':>7}{'batch':>11}{'bucketed':>9}{'passages/s':>11}{'tokens/s':>10}{'pass/cpu-s':>11}"
          f"{'load s':>8}{'peak MiB':>9}{'end MiB':>8}{'query p50 ms':>13}{'loadavg':>12}")
    for r in runs:
        query = r.get("query_ms", {}).get("p50", "")
        load = "/".join(str(x) for x in r["loadavg_1min"])
        print(f"{r['threads']:>7}{str(r['batch']):>11}{str(r['bucketed']):>9}{r['passages_per_s']:>11}"
              f"{r['tokens_per_s']:>10}{r['passages_per_cpu_s']:>11}{r['first_load_s']:>8}{r['rss_mib']['peak']:>9}"
              f"{r['rss_mib']['end'] or '':>8}{query:>13}{load:>12}")
    print("loadavg: the machine's 1-minute load before/after the run (2 cores: above 2 means other work competed)")


if __name__ == "__main__":
    main()
