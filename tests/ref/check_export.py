#!/usr/bin/env python3
"""`dsv export` against transformers: the exported directory loads with AutoModelForCausalLM (no
missing weights; only the MTP module's tensors unused, as for the DeepSeek-V3 release) and gives the
logits `dsv logits` gives on that same directory; the stored tensors are the source's, bit for bit.

    python3 tests/ref/check_export.py --dsv build/cpu/tools/dsv/dsv --model models/tiny

For --dtype fp32 and bf16 exports (sharded small, so the index is exercised):
  * every exported tensor equals the source tensor converted by torch (.to(dtype)), bit for bit;
    an export in the source's own dtype therefore reproduces it exactly;
  * transformers' logits vs `dsv logits` on a few prompts: max|diff| <= 1e-4 * max|logit| (fp32
    compute, the tolerance of check_random_configs.py);
  * fp32 -> bf16 rounding: a perturbed fp32 copy of the model (low mantissa bits set, some exact
    ties) exported as bf16 equals torch's .to(torch.bfloat16) bit for bit; that copy lacks the MTP
    module's embed_tokens / shared_head.head (as a dsv training checkpoint does) and the export adds
    them as copies of the main model's.
Exits non-zero on any failure.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

TOLERANCE = 1e-4  # relative to max|logit|, as tests/ref/check_random_configs.py
PROMPTS = ["Hello world", "The quick brown fox jumps over the lazy dog.", "1 + 1 = 2, 2 + 2 = 4"]


def load_dir(d):
    """All tensors of a checkpoint directory (single file, shards + index, or extra files in the index)."""
    index = os.path.join(d, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else ["model.safetensors"]
    out = {}
    for f in files:
        out.update(load_file(os.path.join(d, f)))
    return out


def export(dsv, src, out, dtype, shard="200KB"):
    r = subprocess.run([dsv, "export", "--checkpoint", src, "--out", out, "--dtype", dtype, "--max-shard-size", shard],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"dsv export failed ({r.returncode}):\n{r.stderr}")
    return r.stderr.strip()


def same_bits(a, b):
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    view = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}[a.dtype]
    return torch.equal(a.contiguous().view(view), b.contiguous().view(view))


def check_tensors(src, out, dtype, failures):
    """Every source tensor, converted by torch, equals the exported one; the index is consistent."""
    index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
    a, b = load_dir(src), load_dir(out)
    n_shards = len(set(index["weight_map"].values()))
    total = sum(t.numel() * t.element_size() for t in b.values())
    if index["metadata"]["total_size"] != total or set(index["weight_map"]) != set(b):
        failures.append(f"{out}: index total_size/weight_map do not match the shards")
    bad = [k for k, t in a.items() if k not in b or not same_bits(t.to(dtype), b[k])]
    extra = sorted(set(b) - set(a))
    if bad:
        failures.append(f"{out}: {len(bad)} tensor(s) differ from torch's .to({dtype}) of the source, e.g. {bad[:3]}")
    print(f"  tensors: {len(b)} in {n_shards} shard(s), {len(a) - len(bad)}/{len(a)} bit-identical to torch's "
          f".to({dtype}) of the source; added: {extra or 'none'}")


def check_logits(dsv, out, num_hidden_layers, failures, work):
    model, info = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    model.eval()
    def is_mtp(k):  # model.layers.{num_hidden_layers + i}.*: transformers has no MTP modules
        m = re.match(r"model\.layers\.(\d+)\.", k)
        return m is not None and int(m.group(1)) >= num_hidden_layers

    unused = [k for k in info["unexpected_keys"] if not is_mtp(k)]
    if info["missing_keys"] or unused or info.get("mismatched_keys"):
        failures.append(f"{out}: transformers reports missing {info['missing_keys'][:5]}, unexpected (non-MTP) "
                        f"{unused[:5]}, mismatched {info.get('mismatched_keys')}")
    tok = AutoTokenizer.from_pretrained(out)
    worst = 0.0
    for i, prompt in enumerate(PROMPTS):
        ids = tok(prompt, add_special_tokens=True)["input_ids"]
        with torch.no_grad():
            theirs = model(torch.tensor([ids])).logits[0].float().numpy()
        path = os.path.join(work, f"ours_{i}.npy")
        subprocess.run([dsv, "logits", "--model", out, "--ids", ",".join(map(str, ids)), "--out", path],
                       check=True, capture_output=True)
        ours = np.load(path)
        err = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
        worst = max(worst, err)
        print(f"  prompt {i} ({len(ids)} tokens): max|diff| / max|logit| = {err:.2e}")
    if worst > TOLERANCE:
        failures.append(f"{out}: logits differ from transformers by {worst:.2e} > {TOLERANCE}")
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsv", required=True)
    ap.add_argument("--model", default="models/tiny")
    args = ap.parse_args()
    hf_logging.set_verbosity_error()  # the load report lists the MTP tensors as unused; checked below instead
    hf_logging.disable_progress_bar()
    cfg = json.load(open(os.path.join(args.model, "config.json")))
    failures, worst = [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            out = os.path.join(tmp, name)
            print(f"{name}: {export(args.dsv, args.model, out, name)}")
            check_tensors(args.model, out, dtype, failures)
            worst = max(worst, check_logits(args.dsv, out, cfg["num_hidden_layers"], failures, tmp))

        # Rounding: fp32 weights with low mantissa bits (ties included) -> bf16, against torch.
        src = os.path.join(tmp, "fp32_perturbed")
        os.makedirs(src)
        g = torch.Generator().manual_seed(0)
        tensors = {}
        for k, t in load_dir(os.path.join(tmp, "fp32")).items():
            bits = t.view(torch.int32) | torch.randint(0, 1 << 16, t.shape, generator=g, dtype=torch.int32)
            bits.view(-1)[: min(4, bits.numel())] &= ~0x7FFF  # a few exact ties (low half 0x8000 or 0x0000)
            bits.view(-1)[: min(2, bits.numel())] |= 0x8000
            tensors[k] = bits.view(torch.float32)
        # As a dsv training checkpoint: no per-MTP copies of embed_tokens / lm_head; the export adds them.
        L = cfg["num_hidden_layers"]
        dropped = [k for k in tensors if re.fullmatch(rf"model\.layers\.{L}\.(embed_tokens|shared_head\.head)\.weight", k)]
        for k in dropped:
            del tensors[k]
        save_file(tensors, os.path.join(src, "model.safetensors"), metadata={"format": "pt"})
        for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            with open(os.path.join(tmp, "fp32", f), "rb") as i, open(os.path.join(src, f), "wb") as o:
                o.write(i.read())
        rounded = os.path.join(tmp, "bf16_from_fp32")
        print(f"rounding: {export(args.dsv, src, rounded, 'bf16')}")
        check_tensors(src, rounded, torch.bfloat16, failures)
        b = load_dir(rounded)
        head = "model.embed_tokens.weight" if cfg.get("tie_word_embeddings") else "lm_head.weight"
        for k in dropped:
            orig = "model.embed_tokens.weight" if k.endswith("embed_tokens.weight") else head
            if k not in b or not same_bits(b[k], b[orig]):
                failures.append(f"{rounded}: the added {k} is not a copy of {orig}")
        print(f"  MTP copies added by the export: {dropped} (each equal to the main model's)")

    print(f"worst logits error {worst:.2e} (tolerance {TOLERANCE}); {len(failures)} failure(s)")
    for f in failures:
        print("FAIL:", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
