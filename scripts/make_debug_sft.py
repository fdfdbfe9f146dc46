#!/usr/bin/env python3
"""Make data/debug/sft.jsonl: project-made chat conversations for fine-tuning the tiny model.

Everything is generated here from a fixed seed (no third-party text). One conversation per line,
{"messages": [{"role": ..., "content": ...}, ...]}, of four kinds:
  - arithmetic: "What is 7 plus 5?" -> "7 plus 5 is 12." (or just "12" under a calculator system prompt);
  - word reversal: "Reverse the word lamp." -> "The word lamp reversed is pmal.";
  - capitals of made-up countries from a made-up table: "What is the capital of Kalintar?" ->
    "The capital of Kalintar is Tenval.";
  - counting: "Count from 4 to 9." -> "4 5 6 7 8 9".
About a third of the conversations have two or three user/assistant turns and about a third start
with a system prompt. The output is deterministic: re-running the script rewrites the same bytes.

Usage: python3 scripts/make_debug_sft.py [--out data/debug/sft.jsonl] [--conversations 400] [--seed 11]
Needs: nothing beyond the Python standard library.
"""
import argparse
import json
import os
import random

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The made-up world: country and capital names are built from these syllables by a seeded generator
# (see make_world), so the table is the project's own and stable for a given seed.
SYLLABLES = ["val", "mor", "ten", "ka", "ri", "dor", "sel", "an", "bru", "lin", "os", "ve", "tar", "nel", "qui",
             "zan", "fer", "lo", "mi", "gra"]
WORDS = ["cup", "book", "ball", "hat", "box", "key", "lamp", "coat", "tree", "star", "moon", "river", "stone",
         "bird", "fish", "road", "door", "song", "rain", "snow"]
SYSTEM_PLAIN = ["You are a helpful assistant.", "You are a friendly assistant. Answer in one sentence.",
                "Answer the question briefly."]
SYSTEM_CALC = "You are a calculator. Reply with the number only."


def make_name(r, parts):
    return "".join(r.choice(SYLLABLES) for _ in range(parts)).capitalize()


def make_world(r, n=16):
    """n distinct (country, capital) pairs."""
    seen, world = set(), []
    while len(world) < n:
        country, capital = make_name(r, 3), make_name(r, 2)
        if country in seen or capital in seen:
            continue
        seen.update([country, capital])
        world.append((country, capital))
    return world


def arithmetic(r, terse):
    a, b = r.randint(0, 12), r.randint(0, 12)
    op = r.choice(["plus", "minus", "times"])
    if op == "minus":
        a, b = max(a, b), min(a, b)
    value = a + b if op == "plus" else a - b if op == "minus" else a * b
    question = r.choice([f"What is {a} {op} {b}?", f"How much is {a} {op} {b}?", f"Compute {a} {op} {b}."])
    return question, str(value) if terse else f"{a} {op} {b} is {value}."


def reversal(r):
    w = r.choice(WORDS)
    return r.choice([f"Reverse the word {w}.", f"Spell {w} backwards."]), f"The word {w} reversed is {w[::-1]}."


def capital(r, world):
    country, city = r.choice(world)
    if r.random() < 0.75:
        return f"What is the capital of {country}?", f"The capital of {country} is {city}."
    return f"{city} is the capital of which country?", f"{city} is the capital of {country}."


def counting(r):
    start = r.randint(0, 20)
    end = start + r.randint(3, 7)
    return f"Count from {start} to {end}.", " ".join(str(i) for i in range(start, end + 1))


def conversation(r, world):
    calculator = r.random() < 0.1
    messages = []
    if calculator:
        messages.append({"role": "system", "content": SYSTEM_CALC})
    elif r.random() < 0.25:
        messages.append({"role": "system", "content": r.choice(SYSTEM_PLAIN)})
    turns = 1 if r.random() < 0.65 else r.randint(2, 3)
    for _ in range(turns):
        if calculator:
            question, answer = arithmetic(r, terse=True)
        else:
            kind = r.choice(["arithmetic", "reversal", "capital", "capital", "counting"])
            question, answer = (arithmetic(r, terse=False) if kind == "arithmetic" else
                                reversal(r) if kind == "reversal" else
                                capital(r, world) if kind == "capital" else counting(r))
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": answer})
    return {"messages": messages}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "data", "debug", "sft.jsonl"))
    ap.add_argument("--conversations", type=int, default=400)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    r = random.Random(args.seed)
    world = make_world(r)
    lines = [json.dumps(conversation(r, world), ensure_ascii=False, separators=(",", ":"))
             for _ in range(args.conversations)]
    text = "\n".join(lines) + "\n"
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: {len(lines)} conversations, {len(text.encode())} bytes")


if __name__ == "__main__":
    main()
