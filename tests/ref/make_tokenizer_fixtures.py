#!/usr/bin/env python3
"""Reference fixtures for the tokenizer tests, made with the real `tokenizers` and `transformers`.

Writes tests/fixtures/tokenizer/:
  deepseek_v3_encode.jsonl   text -> ids (DeepSeek-V3 tokenizer), with and without special tokens
  deepseek_v3_decode.jsonl   ids -> text, with and without skip_special_tokens
  tiny_encode.jsonl          the same for models/tiny
  variant_<name>.json        small tokenizer.json files exercising other components
  variant_<name>.jsonl       their encode/decode references
  chat_templates.jsonl       template + messages -> rendered prompt (transformers' apply_chat_template)

Texts are written here or generated from a fixed seed. Run from anywhere:
  python3 tests/ref/make_tokenizer_fixtures.py [--deepseek DIR]

With --unicode-delta it instead regenerates src/tokenizer/unicode_delta.inc: for each Unicode
general category, the code points that `tokenizers`' regex engine (Oniguruma, newer Unicode)
puts in it but Python's unicodedata (Unicode 14, the same tables as PCRE2 10.42) does not. The
regex translation adds them to \p{..} classes so both engines split text the same way.
"""
import argparse
import json
import os
import random
import unicodedata

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"

HANDWRITTEN = [
    "", " ", "  ", "\n", "\r\n", "\t", "a", "Hello world", "Hello  world", " leading space", "trailing space ",
    "The quick brown fox jumps over the lazy dog.", "It's, they're, we've, I'm, you'll, he'd.",
    "e-mail: someone@example.com, https://example.com/a/b?c=d&e=f#g", "CamelCaseWordsAndALLCAPS and snake_case_names",
    "1", "12", "123", "1234", "1234567", "3.14159 and 2,718,281 and -42 and 1e-9 and 0x1F", "٣٤٥ ۱۲۳ १२३ ௧௨௩ ¹²³ ½ Ⅻ",
    "Year 2026, room 101, 007 agents, 0000000000", "你好，世界！今天天气很好。", "我们在2026年11月22日测试分词器。",
    "日本語のテキストです。カタカナとひらがな、漢字。", "こんにちは世界", "한국어 텍스트입니다. 안녕하세요!", "ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ",
    "مرحبا بالعالم، هذا نص عربي.", "שלום עולם", "Привет, мир! Ёлка и щи.", "Γειά σου κόσμε", "नमस्ते दुनिया",
    "Tiếng Việt có dấu: được, người, Nguyễn", "Ελληνικά και English mixed 混合 text 123",
    "def f(x):\n    return x ** 2  # square\n", "int main() {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
    '{"key": [1, 2, 3], "nested": {"a": null, "b": true}}', "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
    "    indented with spaces\n\tand tabs\n\n\nthree newlines", "line one\r\nline two\r\n\r\nline four",
    "a\u200bb\u200cc\u200dd\ufeffe", "zero\u200b\u200bwidth", "e\u0301 n\u0303 a\u0308 combining", "ﬁ ﬂ ligatures, ｆｕｌｌｗｉｄｔｈ",
    "👍 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇯🇵 ❤️ 🧑🏿‍💻", "emoji👋in🌍text🚀!", "math: ∑ x² ≤ ∞, α β γ, → ⇒ ∀ ∃",
    "quotes “curly” ‘single’ «guillemets» „low“", "dashes – — and ellipsis… and bullets • ·",
    "$100 €50 £30 ¥1000 ₹200", "<html><body>Hi &amp; bye</body></html>", "!!!???...,,,;;;",
    "   \n   \n", "\n\n\n", "\t\t\tx", "a\rb", "a\u00a0b\u2003c\u3000d", "a\u0085b\u2028c\u2029d",
    BOS + "Hello" + EOS, "text " + EOS + " more", "x" + BOS + BOS + "y", "<｜User｜>Hi<｜Assistant｜>Hello!",
    "<｜fim▁begin｜>def f():<｜fim▁hole｜>\n<｜fim▁end｜>", "<|EOT|> after", "<｜begin▁of▁sentence｜", "<｜｜>",
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{}\n```<｜tool▁call▁end｜>",
    # Characters newer than Unicode 14 (PCRE2 10.42's tables); src/tokenizer/unicode_delta.inc covers them.
    "🫨 🪿 🫎 new emoji", "\U0002EBF0\U0002EBF1\U00031350 CJK extensions", "\U00011380\U00011381 and \u1C89\u1C8A letters",
    "digits \U00010D40\U00010D41\U00010D42 12", "\u2427\u2428 symbols \u31E4",
    "a" * 300, "ab " * 200, "1" * 50, "你" * 100, " " * 100, "\n" * 30,
]

# Character pools for random texts (each filtered to Unicode 14 assigned characters).
POOLS = {
    "ascii": [chr(c) for c in range(32, 127)] + ["\n", "\t", "\r\n", "  "],
    "latin": [chr(c) for c in range(0xA0, 0x250)],
    "cjk": [chr(c) for c in range(0x4E00, 0x4E00 + 400)] + [chr(c) for c in range(0x3040, 0x3100)] + ["，", "。", "！"],
    "hangul": [chr(c) for c in range(0xAC00, 0xAC00 + 300)] + [chr(c) for c in range(0x1100, 0x1113)],
    "thai": [chr(c) for c in range(0x0E01, 0x0E5C)],
    "arabic": [chr(c) for c in range(0x0600, 0x06FF)],
    "devanagari": [chr(c) for c in range(0x0900, 0x0980)],
    "cyrillic_greek": [chr(c) for c in range(0x0370, 0x0500)],
    "digits": list("0123456789") + ["٣", "१", "²", "½", "Ⅻ", "①"],
    "emoji": [chr(c) for c in range(0x1F300, 0x1F650)] + ["\u200d", "\ufe0f", "\U0001F3FD", "🇯", "🇵"],
    "space": [" ", "\t", "\n", "\r", "\u00a0", "\u2003", "\u3000", "\u200b", "\u200d", "\u0085", "\u2028"],
    "punct": list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["…", "—", "“", "”", "·", "¿", "¡", "、"],
}
for k in POOLS:
    POOLS[k] = [c for c in POOLS[k] if all(unicodedata.category(x) not in ("Cn", "Cs") for x in c)]


def random_texts(rng, n, specials, max_parts=40):
    names = sorted(POOLS)
    out = []
    for _ in range(n):
        picks = rng.sample(names, rng.randint(1, 4))
        parts = []
        for _ in range(rng.randint(1, max_parts)):
            pool = POOLS[rng.choice(picks)]
            parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 6))))
            if rng.random() < 0.4:
                parts.append(" ")
            if specials and rng.random() < 0.03:
                parts.append(rng.choice(specials))
        out.append("".join(parts))
    return out


def invalid_utf8_cases():
    # Raw bytes given as hex; the reference reads them as Rust's from_utf8_lossy (= Python's replace).
    return [b"\xff", b"abc\x80def", b"\xc3", b"\xe4\xbd", b"\xe4\xbd\xa0\xe5", b"\xf0\x9f\x98", b"\xed\xa0\x80x",
            b"\xc0\xaf", b"\xf5\x80\x80\x80", b"ok\xfe\xffok", b"\xe2\x82\xac\xe2\x82", b"\x00\x01\x1b[0m"]


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{os.path.relpath(path, ROOT)}: {len(rows)} cases, {os.path.getsize(path)} bytes")


def encode_rows(tok, hf, texts, raw_cases=()):
    rows = []
    for t in texts:
        ids = tok.encode(t, add_special_tokens=False).ids
        ids_special = hf(t)["input_ids"] if hf is not None else tok.encode(t).ids
        row = {"text": t, "ids": ids}
        if hf is None or ids_special != [0] + ids:  # the common case (BOS + ids) is implied
            row["ids_special"] = ids_special
        rows.append(row)
    for b in raw_cases:
        t = b.decode("utf-8", errors="replace")
        row = {"bytes_hex": b.hex(), "ids": tok.encode(t, add_special_tokens=False).ids}
        ids_special = hf(t)["input_ids"] if hf is not None else tok.encode(t).ids
        if hf is None or ids_special != [0] + row["ids"]:
            row["ids_special"] = ids_special
        rows.append(row)
    return rows


def decode_rows(tok, rng, n, vocab_size, extra_ids):
    rows = []
    for i in range(n):
        ids = [rng.randrange(vocab_size + (5 if i % 7 == 0 else 0)) for _ in range(rng.randint(0, 30))]
        if rng.random() < 0.5:
            ids += rng.sample(extra_ids, min(len(extra_ids), rng.randint(1, 3)))
            rng.shuffle(ids)
        for skip in (False, True):
            rows.append({"ids": ids, "skip_special_tokens": skip, "text": tok.decode(ids, skip_special_tokens=skip)})
    return rows


def hf_tokenizer(d):
    cfg = json.load(open(os.path.join(d, "tokenizer_config.json"), encoding="utf-8"))
    # transformers 5 ignores add_bos_token from the config when tokenizer.json exists; passing it
    # explicitly gives transformers 4's LlamaTokenizerFast behaviour (BOS prepended).
    return PreTrainedTokenizerFast.from_pretrained(d, add_bos_token=cfg.get("add_bos_token", False),
                                                   add_eos_token=cfg.get("add_eos_token", False))


def variants(tiny_json):
    """Small tokenizer.json files built from the tiny one, each exercising other components."""
    base = json.loads(tiny_json)
    out = {}

    v = json.loads(tiny_json)
    v["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": False},
        {"type": "Split", "pattern": {"Regex": "[aeiou]"}, "behavior": "MergedWithNext", "invert": False},
        {"type": "Split", "pattern": {"Regex": "\\d"}, "behavior": "Contiguous", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}]}
    v["post_processor"] = {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                      {"SpecialToken": {"id": EOS, "type_id": 0}}],
                           "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {BOS: {"id": BOS, "ids": [0], "tokens": [BOS]},
                                              EOS: {"id": EOS, "ids": [1], "tokens": [EOS]}}}
    out["merged"] = v

    v = json.loads(tiny_json)
    v["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Removed", "invert": False},
        {"type": "Split", "pattern": {"Regex": "\\p{L}+"}, "behavior": "Isolated", "invert": True},
        {"type": "Split", "pattern": {"Regex": "x*"}, "behavior": "MergedWithPrevious", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    v["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Replace", "pattern": {"String": "``"}, "content": "\""},
        {"type": "Replace", "pattern": {"Regex": "\\d+"}, "content": "#"},
        {"type": "Strip", "strip_left": True, "strip_right": True}]}
    out["removed"] = v

    v = json.loads(tiny_json)
    v["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    v["normalizer"] = {"type": "Prepend", "prepend": "_"}
    nid = max(t["id"] for t in base["added_tokens"]) + 1
    v["added_tokens"] += [
        {"id": nid, "content": "[L]", "single_word": False, "lstrip": True, "rstrip": False, "normalized": False, "special": True},
        {"id": nid + 1, "content": "[R]", "single_word": False, "lstrip": False, "rstrip": True, "normalized": False, "special": True},
        {"id": nid + 2, "content": "word", "single_word": True, "lstrip": False, "rstrip": False, "normalized": False, "special": False},
        {"id": nid + 3, "content": "_norm", "single_word": False, "lstrip": False, "rstrip": False, "normalized": True, "special": False},
        {"id": nid + 4, "content": "[LR]", "single_word": False, "lstrip": True, "rstrip": True, "normalized": True, "special": True},
    ]
    v["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": EOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {EOS: {"id": EOS, "ids": [1], "tokens": [EOS]}}}]}
    out["added"] = v

    v = json.loads(tiny_json)
    v["pre_tokenizer"] = None
    v["decoder"] = None
    v["model"]["merges"] = [" ".join(m) for m in v["model"]["merges"]]  # the "a b" spelling
    out["plain"] = v
    return out


VARIANT_TEXTS = [
    "", "hello world", "  two  spaces  ", "a word in words, word.", "sword word_ word1 word", "x [L] y", "x   [L]   y",
    "[R]   after", "a [LR]  b", "_norm and norm", "tokenize 12345 numbers 1 22 333", "``quoted`` text", "xxx axxb x",
    "aeiou vowels everywhere", " leading", "trailing  ", "tab\tand\nnewline", "你好 world", "emoji 👍🏽 here",
    BOS + "b" + EOS, "[L][R][LR]", "word" * 3, "a word\nword\n", "\nword", "word\n\n", "x\n[L]\ny [R]\n\nz",
    "\u00a0[L]\u3000[R]\u2003", "_word word_ éword wordé 1word", "the model and the tokenizer", "\u200bzero width",
]


def chat_cases():
    sys_msg = {"role": "system", "content": "You are a helpful assistant."}
    convs = [
        [{"role": "user", "content": "Hello!"}],
        [sys_msg, {"role": "user", "content": "What is 2+2?"}],
        [sys_msg, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
         {"role": "user", "content": "Tell me a joke.\nMake it short."}],
        [sys_msg, {"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Bonjour"}],
        [{"role": "user", "content": "你好，请介绍一下你自己。"}, {"role": "assistant", "content": "我是一个助手。"}],
        [{"role": "user", "content": "What's the weather in Paris?"},
         {"role": "assistant", "content": None, "tool_calls": [
             {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
         {"role": "tool", "content": "{\"temp\": 18}"},
         {"role": "assistant", "content": "It is 18 degrees in Paris."}],
        [{"role": "user", "content": "Weather in Paris and Rome?"},
         {"role": "assistant", "content": None, "tool_calls": [
             {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
             {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]},
         {"role": "tool", "content": "18"}, {"role": "tool", "content": "22"}],
        [{"role": "user", "content": "  spaces  \n\n and newlines \t"}, {"role": "assistant", "content": ""}],
        [],
    ]
    # A DeepSeek-V2-Chat style template, written for these tests.
    v2 = ("{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
          "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
          "{{ 'User: ' + message['content'] + '\n\n' }}{% elif message['role'] == 'assistant' %}"
          "{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
          "{{ message['content'] + '\n\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
    # Exercises the rest of the supported subset: whitespace control, trim_blocks/lstrip_blocks,
    # loop variables, filters, tests, slicing, tojson, inline if, string methods, loop controls.
    features = """{#- a comment -#}
{%- set sep = "\\n---\\n" %}
{% for m in messages if m.role != 'system' %}
  {{ loop.index }}/{{ loop.length }} {{ m.role | upper }}{% if loop.first %} (first){% endif %}{% if loop.last %} (last){% endif %}:
  {{- ' ' ~ (m.content | trim if m.content is string else 'none') }}
  {%- if m.tool_calls is defined %} calls={{ m.tool_calls | length }} {{ m.tool_calls[0].function | tojson }}{% endif %}
  {%- if not loop.last %}{{ sep }}{% endif %}
{% else %}
no messages
{% endfor %}
{% set ns = namespace(count=0, names=[]) %}
{% for m in messages %}{% if m.content is none %}{% continue %}{% endif %}{% set ns.count = ns.count + 1 %}{% if ns.count > 3 %}{% break %}{% endif %}{% endfor %}
count={{ ns.count }} first3={{ messages[:3] | map(attribute='role') | join(',') }} rev={{ (messages | map(attribute='role') | list)[::-1] | join('|') }}
{{ 'yes' if add_generation_prompt else 'no' }} {{ bos_token | length }} {{ "%s-%s" | format('a', 'b') if false else 'x'.join(['1', '2']) }}
{% if messages | length > 0 %}{{ messages[-1]['content'] is not none and messages[-1]['content'].startswith('  ') }} {{ (messages[0].content or '').split(' ')[0] | lower }} {{ messages[0].content | default('d') | replace('!', '?') }}{% endif %}
{% if tools is not none %}{% for t in tools %}{{ t | tojson(indent=2) }}{% endfor %}{% endif %}
{{ [1, 2, 3] | sum }} {{ {'b': 1, 'a': 2} | dictsort | first | first }} {{ range(3) | list }} {{ 7 // 2 }} {{ 7 % 3 }} {{ -1.5 | abs }} {{ 'abc' in 'xabcx' }} {{ none }} {{ true and not false }}
"""
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    return convs, {"v2": v2, "features": features}, tools


CATEGORIES = ["L", "Lu", "Ll", "Lt", "Lm", "Lo", "M", "Mn", "Mc", "Me", "N", "Nd", "Nl", "No", "P", "Pc", "Pd",
              "Ps", "Pe", "Pi", "Pf", "Po", "S", "Sm", "Sc", "Sk", "So", "Z", "Zs", "Zl", "Zp", "Cf"]


def onig_members(prop, cps):
    """Code points that tokenizers' \p{prop} matches, probed 4096 at a time."""
    from tokenizers import Regex, pre_tokenizers
    split = pre_tokenizers.Split(Regex(r"\p{%s}" % prop), "removed")
    members = set()
    for i in range(0, len(cps), 4096):
        block = cps[i:i + 4096]
        kept = set()
        for _, (a, b) in split.pre_tokenize_str("\x00".join(chr(c) for c in block)):
            kept.update(range(a, b))
        members.update(c for j, c in enumerate(block) if 2 * j not in kept)
    return members


def write_unicode_delta():
    import tokenizers
    cps = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    lines = []
    for cat in CATEGORIES:
        ours = {c for c in cps if unicodedata.category(chr(c)).startswith(cat)}
        theirs = onig_members(cat, cps)
        left = ours - theirs  # a union cannot take these out; they stay a known difference
        extra = sorted(theirs - ours)
        ranges = []
        for c in extra:
            if ranges and ranges[-1][1] == c - 1:
                ranges[-1][1] = c
            else:
                ranges.append([c, c])
        text = "".join(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges)
        note = f", {len(left)} left it (not expressible)" if left else ""
        lines.append(f'    {{"{cat}", R"({text})"}},  // +{len(extra)} code points{note}')
        print(f"{cat}: +{len(extra)} code points in {len(ranges)} ranges{note}")
    path = os.path.join(ROOT, "src", "tokenizer", "unicode_delta.inc")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"// Generated by tests/ref/make_tokenizer_fixtures.py --unicode-delta; do not edit.\n"
                f"// Code points that tokenizers {tokenizers.__version__} (Oniguruma) places in each general category\n"
                f"// beyond Unicode {unicodedata.unidata_version} (the tables of PCRE2 10.42), as PCRE2 class ranges.\n")
        f.write("\n".join(lines) + "\n")
    print(f"wrote {os.path.relpath(path, ROOT)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deepseek", default=os.path.join(ROOT, "..", "shared", "tokenizers", "deepseek-v3"))
    ap.add_argument("--unicode-delta", action="store_true", help="regenerate src/tokenizer/unicode_delta.inc and stop")
    args = ap.parse_args()
    if args.unicode_delta:
        write_unicode_delta()
        return
    os.makedirs(OUT, exist_ok=True)
    rng = random.Random(20261122)

    # DeepSeek-V3.
    ds = Tokenizer.from_file(os.path.join(args.deepseek, "tokenizer.json"))
    ds_hf = hf_tokenizer(args.deepseek)
    specials = [t.content for t in ds.get_added_tokens_decoder().values()][:3] + ["<｜User｜>", "<｜Assistant｜>", "<|EOT|>"]
    texts = HANDWRITTEN + random_texts(rng, 300, specials, 20)
    rows = encode_rows(ds, ds_hf, texts, invalid_utf8_cases())
    for r in rows:  # transformers (with add_bos_token) = BOS + tokenizers, for every case
        assert "ids_special" not in r, r
    write_jsonl(os.path.join(OUT, "deepseek_v3_encode.jsonl"), rows)
    write_jsonl(os.path.join(OUT, "deepseek_v3_decode.jsonl"),
                decode_rows(ds, rng, 60, 128000, [0, 1, 2, 128000, 128803, 128804, 128805, 128814]))

    # The bundled tiny tokenizer.
    tiny_dir = os.path.join(ROOT, "models", "tiny")
    tiny = Tokenizer.from_file(os.path.join(tiny_dir, "tokenizer.json"))
    tiny_hf = hf_tokenizer(tiny_dir)
    rows = encode_rows(tiny, tiny_hf, HANDWRITTEN + random_texts(rng, 60, [BOS, EOS, "<｜User｜>"], 15), invalid_utf8_cases())
    rows += decode_rows(tiny, rng, 20, tiny.get_vocab_size(), [0, 1, 512, 515])
    write_jsonl(os.path.join(OUT, "tiny.jsonl"), rows)

    # Variants of the tiny tokenizer.
    tiny_json = open(os.path.join(tiny_dir, "tokenizer.json"), encoding="utf-8").read()
    for name, v in variants(tiny_json).items():
        path = os.path.join(OUT, f"variant_{name}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(v, f, ensure_ascii=False, separators=(",", ":"))
        tok = Tokenizer.from_file(path)
        rows = encode_rows(tok, None, VARIANT_TEXTS + random_texts(rng, 30, ["[L]", "[R]", "[LR]", "word", BOS], 12))
        rows += decode_rows(tok, rng, 10, tok.get_vocab_size(), [0, 1])
        write_jsonl(os.path.join(OUT, f"variant_{name}.jsonl"), rows)

    # Chat templates, rendered by transformers' apply_chat_template with DeepSeek-V3's special tokens.
    convs, templates, tools = chat_cases()
    templates["deepseek_v3"] = ds_hf.chat_template
    rows = []
    for tname, tmpl in sorted(templates.items()):
        for ci, conv in enumerate(convs):
            for agp in (False, True):
                for use_tools in ((False, True) if tname == "features" else (False,)):
                    if not conv:  # transformers refuses empty conversations
                        continue
                    kw = {"tools": tools} if use_tools else {}
                    row = {"template_name": tname, "messages": conv, "add_generation_prompt": agp}
                    try:
                        text = ds_hf.apply_chat_template(conv, chat_template=tmpl, tokenize=False,
                                                         add_generation_prompt=agp, **kw)
                        row["expected"] = text
                    except Exception as e:  # the template fails on this input: ours must fail too
                        row["error"] = f"{type(e).__name__}: {e}"
                        text = None
                    if use_tools:
                        row["tools"] = tools
                    if tname == "deepseek_v3" and text is not None:
                        row["ids"] = ds.encode(text, add_special_tokens=False).ids
                    rows.append(row)
    with open(os.path.join(OUT, "chat_templates.json"), "w", encoding="utf-8") as f:
        json.dump({"templates": templates, "special_tokens": ds_hf.special_tokens_map, "cases": rows}, f,
                  ensure_ascii=False, indent=1)
    print(f"chat_templates.json: {len(rows)} cases")


if __name__ == "__main__":
    main()
