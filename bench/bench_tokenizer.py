#!/usr/bin/env python3
"""Tokenizer speed: dsv vs Hugging Face `tokenizers` on the same generated text.

Generates a mixed-script corpus (English-like prose, code, numbers, CJK, Korean, Thai, Arabic,
Cyrillic, emoji; nothing downloaded), writes it as JSONL, then measures
  - load time of tokenizer.json (dsv: `dsv tokenize --stats`; tokenizers: Tokenizer.from_file),
  - single-thread encode throughput (MB/s of UTF-8 input),
  - batch throughput on 1..N threads (dsv --threads N; tokenizers encode_batch with RAYON_NUM_THREADS=N),
and checks that both produce identical ids for every line.

Usage: python3 bench/bench_tokenizer.py [--dsv build/tok/tools/dsv/dsv] [--tokenizer DIR] [--mb 4]
"""
import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, ".."))

WORDS = ("the model reads tokens and predicts the next one while a cache keeps what it has seen so far "
         "experts share the work router picks two of many layers attention latent compressed weights "
         "gradient loss schedule batch sequence length memory speed kernel matrix vector sum product "
         "it's they're we've don't can't I'm you'll").split()
CODE = ["def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) {\n\ty[i] += a * x[i];\n}\n",
        "if err != nil {\n\treturn fmt.Errorf(\"open %s: %w\", path, err)\n}\n", "{\"key\": [1, 2, 3], \"ok\": true}\n",
        "SELECT id, name FROM users WHERE age > 30 ORDER BY name;\n", "#include <vector>\nstd::vector<int> v{1, 2, 3};\n"]
SCRIPTS = [(0x4E00, 0x9FA5), (0x3040, 0x30FF), (0xAC00, 0xD7A3), (0x0E01, 0x0E3A), (0x0621, 0x064A), (0x0410, 0x044F)]
EMOJI = ["👍", "👍🏽", "👨‍👩‍👧", "🚀", "❤️", "🇯🇵", "😀"]


def make_corpus(mb, seed=2026, kind="mixed"):
    """kind="mixed": all scripts (many distinct words: hard on word caches); "english": prose-like
    words, numbers and punctuation only (few distinct words, like most English text)."""
    rng = random.Random(seed)
    lines, size = [], 0
    while size < mb * 1e6:
        parts = []
        for _ in range(rng.randint(20, 120)):
            r = rng.random()
            if r < 0.55:
                w = rng.choice(WORDS)
                parts.append(w.capitalize() if rng.random() < 0.1 else w)
            elif r < 0.65:
                parts.append(str(rng.randint(0, 10 ** rng.randint(1, 9))))
            elif kind == "english" and r < 0.96:
                parts.append(rng.choice(WORDS))
            elif r < 0.85:
                lo, hi = rng.choice(SCRIPTS)
                parts.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 8))))
            elif r < 0.92:
                parts.append(rng.choice(CODE))
            elif r < 0.96:
                parts.append(rng.choice(EMOJI))
            else:
                parts.append(rng.choice([",", ".", "!", "?", ";", ":", "\n", "\n\n", "  ", "\t", " - "]))
        line = " ".join(parts)
        lines.append(line)
        size += len(line.encode("utf-8"))
    return lines


def run_dsv(dsv, tok_dir, inp, out, threads):
    p = subprocess.run([dsv, "tokenize", "--tokenizer", tok_dir, "--input", inp, "--output", out, "--threads",
                        str(threads), "--stats"], capture_output=True, text=True, check=True)
    load_ms = float(re.search(r"loaded .* in ([\d.]+) ms", p.stderr).group(1))
    mbs = float(re.search(r"([\d.]+) MB/s", p.stderr).group(1))
    return load_ms, mbs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsv", default=os.path.join(ROOT, "build", "tok", "tools", "dsv", "dsv"))
    ap.add_argument("--tokenizer", default=os.path.join(ROOT, "..", "shared", "tokenizers", "deepseek-v3"))
    ap.add_argument("--mb", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs")
    ap.add_argument("--kind", default="mixed,english", help="corpora to run: mixed, english (comma-separated)")
    args = ap.parse_args()
    status = 0
    for kind in args.kind.split(","):
        print(f"== {kind} corpus ==")
        status |= bench(args, kind)
    return status


def bench(args, kind):
    lines = make_corpus(args.mb, kind=kind)
    total = sum(len(l.encode("utf-8")) for l in lines)
    print(f"corpus: {len(lines)} lines, {total / 1e6:.2f} MB, cpus={os.cpu_count()}")
    tmp = tempfile.mkdtemp()
    inp, out = os.path.join(tmp, "in.jsonl"), os.path.join(tmp, "out.jsonl")
    with open(inp, "w", encoding="utf-8") as f:
        for l in lines:
            f.write(json.dumps({"text": l}, ensure_ascii=False) + "\n")

    thread_counts = sorted({1, 2, args.threads} - {0})
    rows = {}
    # tokenizers: single-thread encode and batch, in a child process per thread count (RAYON_NUM_THREADS
    # is read once at start).
    child = r'''
import json, sys, time
from tokenizers import Tokenizer
path, inp, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter(); tok = Tokenizer.from_file(path); load = (time.perf_counter() - t0) * 1e3
lines = [json.loads(l)["text"] for l in open(inp, encoding="utf-8")]
total = sum(len(l.encode("utf-8")) for l in lines)
single = 0.0
for _ in range(repeat):
    t0 = time.perf_counter(); ids = [tok.encode(l, add_special_tokens=False).ids for l in lines]; dt = time.perf_counter() - t0
    single = max(single, total / dt / 1e6)
batch = 0.0
for _ in range(repeat):
    t0 = time.perf_counter(); tok.encode_batch(lines, add_special_tokens=False); dt = time.perf_counter() - t0
    batch = max(batch, total / dt / 1e6)
print(json.dumps({"load_ms": load, "single": single, "batch": batch}))
json.dump(ids, open(sys.argv[4], "w"))
'''
    ref_ids = os.path.join(tmp, "ref_ids.json")
    for n in thread_counts:
        env = dict(os.environ, RAYON_NUM_THREADS=str(n), TOKENIZERS_PARALLELISM="true")
        p = subprocess.run([sys.executable, "-c", child, os.path.join(args.tokenizer, "tokenizer.json"), inp,
                            str(args.repeat), ref_ids], capture_output=True, text=True, check=True, env=env)
        rows[("tokenizers", n)] = json.loads(p.stdout)

    for n in thread_counts:
        best = (1e9, 0.0)
        for _ in range(args.repeat):
            load_ms, mbs = run_dsv(args.dsv, args.tokenizer, inp, out, n)
            best = (min(best[0], load_ms), max(best[1], mbs))
        rows[("dsv", n)] = {"load_ms": best[0], "batch": best[1]}

    # Identity on the whole corpus.
    ours = [json.loads(l)["ids"] for l in open(out, encoding="utf-8")]
    ref = json.load(open(ref_ids))
    same = sum(a == b for a, b in zip(ours, ref))
    print(f"identical ids: {same}/{len(ref)} lines")

    t1 = rows[("tokenizers", 1)]
    d1 = rows[("dsv", 1)]
    print(f"load tokenizer.json: dsv {d1['load_ms']:.0f} ms, tokenizers {t1['load_ms']:.0f} ms")
    print(f"single thread: dsv {d1['batch']:.2f} MB/s, tokenizers {t1['single']:.2f} MB/s "
          f"(encode per line), ratio {d1['batch'] / t1['single']:.2f}x")
    for n in thread_counts:
        d, t = rows[("dsv", n)], rows[("tokenizers", n)]
        print(f"batch {n} thread(s): dsv {d['batch']:.2f} MB/s, tokenizers encode_batch {t['batch']:.2f} MB/s")
    return 0 if same == len(ref) else 1


if __name__ == "__main__":
    sys.exit(main())
