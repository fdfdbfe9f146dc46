#!/usr/bin/env python3
"""Random DeepSeek-V2/V3 configurations (not the fixtures) built with transformers, compared with
`dsv logits` and `dsv logits --mtp-out`: sizes, head dims, group counts, routers, YaRN settings,
rope layouts, q-LoRA on/off, biases, tied embeddings, bf16 storage.

    python3 tests/ref/check_random_configs.py --dsv build/cpu/tools/dsv/dsv --count 40 --seed 1
Exits non-zero if any configuration misses max|diff| <= 1e-4 * max|logit|.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
import make_fixtures as mf  # noqa: E402


def random_config(r):
    family = r.choice(["v2", "v3"])
    heads = r.choice([1, 2, 3, 4, 6])
    E = r.choice([4, 6, 8, 12, 16])
    groups = [g for g in (1, 2, 3, 4, 6, 8) if E % g == 0 and (family == "v2" or E // g >= 2)]
    n_group = r.choice(groups)
    topk_group = r.randint(1, n_group)
    K = r.randint(1, min(E, topk_group * (E // n_group)))
    layers = r.randint(1, 4)
    kw = mf.base_dims(
        hidden_size=r.choice([16, 24, 32, 40, 64]), intermediate_size=r.choice([24, 40, 72]),
        moe_intermediate_size=r.choice([8, 12, 20]), num_hidden_layers=layers, num_attention_heads=heads,
        kv_lora_rank=r.choice([8, 16, 20, 32]), q_lora_rank=r.choice([None, 12, 24, 40]),
        qk_nope_head_dim=r.choice([0, 4, 8, 12, 16]) or 4, qk_rope_head_dim=r.choice([2, 4, 8, 16]),
        v_head_dim=r.choice([4, 8, 10, 16]), n_routed_experts=E, n_shared_experts=r.choice([0, 1, 2]),
        num_experts_per_tok=K, first_k_dense_replace=r.randint(0, layers), n_group=n_group, topk_group=topk_group,
        routed_scaling_factor=r.choice([1.0, 1.5, 2.5]), rms_norm_eps=r.choice([1e-6, 1e-5]),
        attention_bias=r.random() < 0.3, tie_word_embeddings=r.random() < 0.2,
        vocab_size=r.choice([64, 100, 128]), max_position_embeddings=r.choice([128, 512, 4096]))
    kw["rope_theta"] = r.choice([10000.0, 5000.0, 100000.0])
    if r.random() < 0.6:
        y = {"type": "yarn", "factor": r.choice([2.0, 4.0, 16.0, 40.0]),
             "original_max_position_embeddings": r.choice([16, 32, 64]),
             "beta_fast": r.choice([32, 16, 8]), "beta_slow": r.choice([1, 2])}
        if r.random() < 0.7:
            y["mscale"] = r.choice([0.707, 1.0, 0.5])
            y["mscale_all_dim"] = r.choice([0.707, 1.0, 0.8, 0.0])
        if r.random() < 0.5:  # the transformers 5 spelling
            y = {"rope_type": "yarn", "rope_theta": kw.pop("rope_theta"), **{k: v for k, v in y.items() if k != "type"}}
            kw["rope_parameters"] = y
        else:
            kw["rope_scaling"] = y
    if family == "v2":
        kw["topk_method"] = r.choice(["greedy", "group_limited_greedy"])
        kw["mlp_bias"] = r.random() < 0.2
    else:
        kw["norm_topk_prob"] = r.random() < 0.7
        kw["rope_interleave"] = r.random() < 0.7
        kw["num_nextn_predict_layers"] = 1 if r.random() < 0.3 else 0
    opts = {"dtype": "bf16"} if r.random() < 0.2 else {}
    if family == "v3" and kw["num_nextn_predict_layers"]:
        opts["mtp"] = True
    return family, kw, opts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsv", required=True)
    ap.add_argument("--count", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    r = random.Random(args.seed)
    worst, failures = 0.0, []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.count):
            family, kw, opts = random_config(r)
            name = f"cfg{i:03d}"
            try:
                mf.build(name, family, kw, opts, tmp, seed=args.seed * 1000 + i)
            except Exception as e:  # a config transformers itself rejects is skipped, not counted
                print(f"{name}: transformers rejected it ({type(e).__name__}: {e}); skipped")
                continue
            d = os.path.join(tmp, name)
            ref = json.load(open(os.path.join(d, "ref.json")))
            ids = ",".join(map(str, ref["ids"]))
            cmd = [args.dsv, "logits", "--model", d, "--ids", ids, "--out", os.path.join(d, "ours.npy")]
            if os.path.exists(os.path.join(d, "mtp_logits.npy")):
                cmd += ["--mtp-out", os.path.join(d, "ours_mtp.npy")]
            subprocess.run(cmd, check=True, capture_output=True)
            errs = []
            for ours, theirs in (("ours.npy", "logits.npy"), ("ours_mtp.npy", "mtp_logits.npy")):
                if os.path.exists(os.path.join(d, theirs)):
                    a, b = np.load(os.path.join(d, ours)), np.load(os.path.join(d, theirs))
                    errs.append(float(np.abs(a - b).max() / np.abs(b).max()))
            gen = subprocess.run([args.dsv, "generate", "--model", d, "--prompt-ids",
                                  ",".join(map(str, ref["greedy"]["prompt"])), "--max-new-tokens",
                                  str(len(ref["greedy"]["continuation"])), "--ignore-eos"],
                                 check=True, capture_output=True, text=True).stdout.strip()
            same = [int(x) for x in gen.split(",")] == ref["greedy"]["continuation"]
            err = max(errs)
            worst = max(worst, err)
            ok = err <= 1e-4 and same
            desc = (f"{family} L{kw['num_hidden_layers']} D{kw['hidden_size']} H{kw['num_attention_heads']} "
                    f"E{kw['n_routed_experts']}/G{kw.get('n_group')}/K{kw['num_experts_per_tok']} "
                    f"q_lora={kw['q_lora_rank']} rope={'yarn' if ('rope_scaling' in kw or 'rope_parameters' in kw) else 'default'} "
                    f"{opts}")
            print(f"{name}: {'ok  ' if ok else 'FAIL'} rel.err {err:.2e} greedy {'same' if same else 'DIFFERENT'} ({desc})")
            if not ok:
                failures.append(name)
    print(f"worst relative error {worst:.2e}; {len(failures)} failure(s) {failures}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
