#!/usr/bin/env python3
"""Train the tiny byte-level BPE tokenizer bundled with models/tiny.

The training text below is written for this project (no third-party text). The tokenizer has
the shape of DeepSeek-V3's: the same Split regexes followed by ByteLevel, a ByteLevel decoder,
BOS/EOS at ids 0 and 1, the chat-control tokens as added tokens, add_bos_token true, and a copy
of DeepSeek-V3's chat template (passed in with --chat-template-from, or the copy stored below).

Usage: python3 scripts/make_tiny_tokenizer.py [--out models/tiny] [--vocab-size 512]
Needs: pip install tokenizers
"""
import argparse
import json
import os

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

TEXT = """
A tokenizer turns text into a list of small whole numbers, and back again. A language model never
sees letters: it sees these numbers, one per token, and learns which number tends to follow which.
This tokenizer works on bytes, so every piece of text can be written down, whatever its script,
its symbols or its mistakes. Frequent pairs of bytes are merged into one token, then frequent pairs
of those, and so on until the vocabulary is full. Common words end up as a single token; rare words
are spelled with several.

Before merging, the text is cut into pieces. Numbers are cut into groups of at most three digits,
so 1234567 becomes 123, 456 and 7. Runs of Chinese or Japanese characters form their own pieces.
Words keep the space in front of them, punctuation sticks together, and new lines stand apart.
Merges never cross the border between two pieces.

A language model reads the tokens of a prompt and predicts the next token, one step at a time.
The model we ship here is tiny: it exists so that tests can run a real forward pass on a laptop
in a fraction of a second. It has a handful of layers, a few experts, and latent attention with
a compressed cache, the same parts as the large models but with small sizes. Its answers mean
nothing; its numbers must still match the reference, digit for digit.

Training adjusts the weights so that the predicted token matches the real next token more often.
The loss goes down, the learning rate follows a schedule, and the experts share the work evenly
because the router is nudged toward the ones that are idle. Inference keeps a cache of what the
model has already read, so that each new token costs only one more step.

The user asks a question. The assistant answers it. The system prompt sets the tone. A tool call
asks a program for help, and the tool output comes back as text. Every message ends with a special
token that says the turn is over. 0 1 2 3 4 5 6 7 8 9 10 42 100 365 2026 3.14 (a + b) * c = d;
if (x != y) { return x[i] - y[j]; } "quoted", 'single', path/to/file.txt, key: value, #tag, @name.
"""

# The Split regexes of DeepSeek-V3's tokenizer.json pre_tokenizer (numbers in groups of up to
# three; CJK runs; words, punctuation and whitespace), followed by ByteLevel without its own regex.
DEEPSEEK_SPLITS = [
    r"\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
]

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
# Chat-control tokens the DeepSeek-V3 template writes; added (not special) as in DeepSeek-V3.
CHAT_TOKENS = [
    "<｜User｜>", "<｜Assistant｜>", "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>",
    "<｜tool▁call▁end｜>", "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>",
    "<｜tool▁output▁end｜>", "<｜tool▁sep｜>",
]


def build(vocab_size):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in DEEPSEEK_SPLITS]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[BOS, EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False)
    paragraphs = [p.strip() for p in TEXT.split("\n\n") if p.strip()]
    tok.train_from_iterator(paragraphs, trainer=trainer)
    tok.add_tokens(CHAT_TOKENS)
    return tok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "models", "tiny"))
    ap.add_argument("--vocab-size", type=int, default=512)
    ap.add_argument("--chat-template-from", default=os.path.join(here, "..", "..", "shared", "tokenizers", "deepseek-v3",
                                                                 "tokenizer_config.json"),
                    help="tokenizer_config.json whose chat_template is copied (DeepSeek-V3's)")
    args = ap.parse_args()

    tok = build(args.vocab_size)
    assert tok.token_to_id(BOS) == 0 and tok.token_to_id(EOS) == 1
    os.makedirs(args.out, exist_ok=True)
    tok.save(os.path.join(args.out, "tokenizer.json"))

    with open(args.chat_template_from, encoding="utf-8") as f:
        chat_template = json.load(f)["chat_template"]
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "tokenizer_class": "LlamaTokenizerFast",
        "chat_template": chat_template,
    }
    with open(os.path.join(args.out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)
        f.write("\n")
    print(f"wrote {args.out}/tokenizer.json ({tok.get_vocab_size()} tokens) and tokenizer_config.json")


if __name__ == "__main__":
    main()
