#!/usr/bin/env python3
"""Make data/debug: project-made training text for the tiny model, and its tokens.

The text is generated here from a fixed seed (no third-party text): short documents of four
kinds, each with structure a tiny model can pick up within a few hundred steps:
  - counting: runs of consecutive numbers, in digits or in words, up or down;
  - arithmetic facts: "7 plus 5 is 12.", "9 minus 4 is 5.", "3 times 6 is 18.";
  - a small grammar of simple sentences about animals, colours, places and actions;
  - tiny stories that reuse their own names ("Ana has a red cup. ... Ana gives the red cup to Bo.").
Documents are tokenized with the bundled tokenizer (models/tiny/tokenizer.json, no BOS added) and
joined with the EOS id after each one, then written as little-endian int32 (data/debug/tokens.bin).

The same documents are also written as data/debug/corpus.jsonl ({"text": ...} per line), the input
of `dsv preprocess` in the end-to-end test (tests/cli/train_e2e.cmake): preprocessing it with the tiny
tokenizer must give exactly the ids of tokens.bin.

Usage: python3 scripts/make_debug_data.py [--out data/debug] [--docs 2500] [--seed 7] [--write-text]
Needs: pip install tokenizers
"""
import argparse
import json
import os
import random
import struct

from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
ANIMALS = ["cat", "dog", "fox", "bird", "fish", "horse", "mouse", "owl", "frog", "bear"]
COLOURS = ["red", "blue", "green", "small", "big", "old", "young", "quick", "quiet", "happy"]
PLACES = ["the house", "the garden", "the river", "the hill", "the forest", "the town", "the field", "the lake"]
VERBS = [("sees", "saw"), ("finds", "found"), ("likes", "liked"), ("follows", "followed"), ("helps", "helped")]
MOVES = ["runs to", "walks to", "swims in", "sleeps near", "waits by", "plays in"]
NAMES = ["Ana", "Bo", "Cal", "Dee", "Eli", "Fay", "Gus", "Ivy", "Jon", "Kim"]
THINGS = ["cup", "book", "ball", "hat", "box", "key", "lamp", "coat"]


def counting(r):
    start = r.randint(0, 60)
    n = r.randint(6, 14)
    if r.random() < 0.3 and start + n <= len(WORDS):
        seq = [WORDS[i] for i in range(start, start + n)]
        return "Counting in words: " + ", ".join(seq) + "."
    if r.random() < 0.5:
        seq = [str(i) for i in range(start, start + n)]
        return "Count up from " + str(start) + ": " + " ".join(seq) + "."
    top = start + n
    seq = [str(i) for i in range(top, top - n, -1)]
    return "Count down from " + str(top) + ": " + " ".join(seq) + "."


def arithmetic(r):
    facts = []
    for _ in range(r.randint(4, 8)):
        a, b = r.randint(0, 12), r.randint(0, 12)
        op = r.choice(["plus", "minus", "times"])
        if op == "plus":
            facts.append(f"{a} plus {b} is {a + b}.")
        elif op == "minus":
            a, b = max(a, b), min(a, b)
            facts.append(f"{a} minus {b} is {a - b}.")
        else:
            facts.append(f"{a} times {b} is {a * b}.")
    return " ".join(facts)


def noun(r):
    return f"the {r.choice(COLOURS)} {r.choice(ANIMALS)}"


def sentence(r):
    kind = r.randint(0, 3)
    if kind == 0:
        return f"{noun(r).capitalize()} {r.choice(VERBS)[0]} {noun(r)}."
    if kind == 1:
        return f"{noun(r).capitalize()} {r.choice(MOVES)} {r.choice(PLACES)}."
    if kind == 2:
        return f"Yesterday {noun(r)} {r.choice(VERBS)[1]} {noun(r)} in {r.choice(PLACES)}."
    a = r.choice(ANIMALS)
    return f"A {a} is an animal. The {a} lives near {r.choice(PLACES)}."


def grammar(r):
    return " ".join(sentence(r) for _ in range(r.randint(3, 7)))


def article(word):
    return "an" if word[0] in "aeiou" else "a"


def story(r):
    a, b = r.sample(NAMES, 2)
    colour, thing = r.choice(COLOURS), r.choice(THINGS)
    place = r.choice(PLACES)
    lines = [f"{a} has {article(colour)} {colour} {thing}.", f"{a} goes to {place} with the {thing}.", f"At {place}, {a} meets {b}."]
    if r.random() < 0.5:
        lines += [f"{b} asks for the {colour} {thing}.", f"{a} gives the {colour} {thing} to {b}.",
                  f"Now {b} has the {colour} {thing}."]
    else:
        lines += [f"{b} likes the {colour} {thing} too.", f"{a} keeps the {colour} {thing}.",
                  f"{a} and {b} walk home from {place}."]
    return " ".join(lines)


def make_documents(count, seed):
    r = random.Random(seed)
    makers = [counting, arithmetic, grammar, story]
    return [makers[i % len(makers)](r) for i in range(count)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "data", "debug"))
    ap.add_argument("--tokenizer", default=os.path.join(ROOT, "models", "tiny", "tokenizer.json"))
    ap.add_argument("--docs", type=int, default=2500)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--write-text", action="store_true", help="also write the text as text.txt (not committed)")
    ap.add_argument("--eos-id", type=int, default=1, help="models/tiny's <｜end▁of▁sentence｜>")
    args = ap.parse_args()

    docs = make_documents(args.docs, args.seed)
    tok = Tokenizer.from_file(args.tokenizer)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    ids = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(args.eos_id)
    assert all(0 <= t < vocab for t in ids), "token id outside the vocabulary"

    os.makedirs(args.out, exist_ok=True)
    text = "\n".join(docs) + "\n"
    if args.write_text:
        with open(os.path.join(args.out, "text.txt"), "w", encoding="utf-8") as f:
            f.write(text)
    with open(os.path.join(args.out, "corpus.jsonl"), "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    with open(os.path.join(args.out, "tokens.bin"), "wb") as f:
        f.write(struct.pack(f"<{len(ids)}i", *ids))
    print(f"{len(docs)} documents, {len(text.encode())} bytes of text, {len(ids)} tokens "
          f"({len(text.encode()) / len(ids):.2f} bytes/token, vocab {vocab}) -> {args.out}")


if __name__ == "__main__":
    main()
