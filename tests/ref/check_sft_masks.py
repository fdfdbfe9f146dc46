#!/usr/bin/env python3
"""Reference SFT masks (docs/SFT.md) made with transformers, for tests/unit/test_sft_dataset.cpp.

For each conversation of tests/fixtures/sft/conversations.jsonl and each tokenizer (the DeepSeek-V3
one in ../shared/tokenizers/deepseek-v3 and the bundled models/tiny), this builds the token ids and
the learned-token mask the way docs/SFT.md describes, but with transformers and by a different route
than the engine:
  - spans: the same documented rule, rendered with transformers' apply_chat_template: assistant
    message i covers the characters [len(T(m[:i], add_generation_prompt=True)), len(T(m[:i+1])))
    of the full text T(m), and every rendered prefix must be a string prefix of the next;
  - tokens: the FULL text encoded in one piece (add_special_tokens=False) with the fast tokenizer's
    character offsets; a token is learned when its offsets lie inside a span (one that straddles a
    span boundary is an error). The engine instead encodes the segments between boundaries
    separately and concatenates, so agreement also shows that the two give the same tokens.

  python3 tests/ref/check_sft_masks.py            # compare with the committed fixtures (exit 1 on a difference)
  python3 tests/ref/check_sft_masks.py --write    # rewrite tests/fixtures/sft/expected_<tokenizer>.json

Needs: pip install transformers tokenizers
"""
import argparse
import json
import os
import sys

from transformers import PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "sft")
TOKENIZERS = {
    "deepseek_v3": os.path.normpath(os.path.join(ROOT, "..", "shared", "tokenizers", "deepseek-v3")),
    "tiny": os.path.join(ROOT, "models", "tiny"),
}


def spans_of(tok, messages):
    """Learned character spans of the full text, by the documented prefix rule."""
    def render(count, generation_prompt):
        return tok.apply_chat_template(messages[:count], tokenize=False, add_generation_prompt=generation_prompt)

    prev, spans = "", []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            prompt = render(i, True)
            assert prompt.startswith(prev), f"not prefix-stable before messages[{i}]"
            prev = prompt
        text = render(i + 1, False)
        assert text.startswith(prev), f"not prefix-stable at messages[{i}]"
        if m["role"] == "assistant":
            spans.append((len(prev), len(text)))
        prev = text
    return prev, spans


def masks(tok, messages):
    text, spans = spans_of(tok, messages)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    learned = []
    for (start, end) in enc["offset_mapping"]:
        inside = [s <= start and end <= e for (s, e) in spans]
        outside = [end <= s or start >= e for (s, e) in spans]
        assert all(a or b for a, b in zip(inside, outside)), f"token at {start}..{end} straddles a span boundary"
        learned.append(1 if any(inside) else 0)
    return {"ids": enc["input_ids"], "learned": learned}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help="rewrite the fixtures instead of comparing")
    args = ap.parse_args()
    conversations = [json.loads(line)["messages"] for line in
                     open(os.path.join(FIXTURES, "conversations.jsonl"), encoding="utf-8") if line.strip()]
    failed = False
    for name, directory in TOKENIZERS.items():
        tok = PreTrainedTokenizerFast.from_pretrained(directory)
        rows = [masks(tok, c) for c in conversations]
        path = os.path.join(FIXTURES, f"expected_{name}.json")
        if args.write:
            with open(path, "w", encoding="utf-8") as f:
                json.dump({"tokenizer": name, "conversations": rows}, f, separators=(",", ":"))
                f.write("\n")
            print(f"wrote {path}: {len(rows)} conversations, {sum(len(r['ids']) for r in rows)} tokens, "
                  f"{sum(sum(r['learned']) for r in rows)} learned")
            continue
        committed = json.load(open(path, encoding="utf-8"))["conversations"]
        if committed != rows:
            bad = [i for i, (a, b) in enumerate(zip(committed, rows)) if a != b]
            print(f"{path}: differs from transformers (conversations {bad or 'count'})")
            failed = True
        else:
            print(f"{path}: matches transformers ({len(rows)} conversations)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
