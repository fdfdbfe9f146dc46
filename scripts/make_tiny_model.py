#!/usr/bin/env python3
"""Makes the bundled tiny model in models/tiny/: a DeepSeek-V3-shaped model (MLA with q-LoRA, one
dense + one MoE layer, sigmoid router with groups, YaRN, one MTP module) with random weights in bf16,
sized for the project's own tokenizer (scripts/make_tiny_tokenizer.py, 512 tokens). Until training
lands it generates noise, but it exercises every part of the engine in a second.

    python3 scripts/make_tiny_model.py   # needs torch + transformers (development only)
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "ref"))
import make_fixtures as mf  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "models", "tiny")


def main():
    tj = json.load(open(os.path.join(OUT, "tokenizer.json")))
    # Rows for every id the tokenizer can emit: the BPE vocab and the added (special) tokens.
    vocab = 1 + max(list(tj["model"]["vocab"].values()) + [t["id"] for t in tj.get("added_tokens", [])])
    kw = mf.base_dims(vocab_size=vocab, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                      num_hidden_layers=2, num_attention_heads=4, kv_lora_rank=32, q_lora_rank=48,
                      qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=8,
                      n_shared_experts=1, num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=1,
                      max_position_embeddings=2048, routed_scaling_factor=2.5, norm_topk_prob=True,
                      num_nextn_predict_layers=1, initializer_range=0.1,
                      rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512,
                                    "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0})
    model = mf.make_model("v3", kw, seed=2026)
    model.config.architectures = ["DeepseekV3ForCausalLM"]
    model.to(torch.bfloat16).save_pretrained(OUT)
    mtp = {k: v.to(torch.bfloat16) for k, v in mf.mtp_state(model.float(), model.config, 2026).items()}
    save_file(mtp, os.path.join(OUT, "mtp.safetensors"), metadata={"format": "pt"})
    from safetensors import safe_open
    with safe_open(os.path.join(OUT, "model.safetensors"), "pt") as f:
        main_keys = list(f.keys())
    index = {"metadata": {}, "weight_map": {**{k: "model.safetensors" for k in main_keys},
                                            **{k: "mtp.safetensors" for k in mtp}}}
    json.dump(index, open(os.path.join(OUT, "model.safetensors.index.json"), "w"), indent=2)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
