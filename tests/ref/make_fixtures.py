#!/usr/bin/env python3
"""Builds tiny random DeepSeek-V2/V3 checkpoints with transformers and stores reference outputs.

Run on the GPU host (torch + transformers 5.17) or any machine with them:
    python3 tests/ref/make_fixtures.py --out tests/fixtures/models
Each fixture directory holds config.json, safetensors, and
    ref.json          ids, greedy prompt/continuation, versions, notes
    logits.npy        float32 [len(ids), vocab] from DeepseekV{2,3}ForCausalLM (fp32 compute on the CPU)
    mtp_logits.npy    (MTP fixtures) float32 [len(ids) - 1, vocab] from transformers' MtpLayer
References are computed in fp32 on the CPU; bf16 / fp8 checkpoints are referenced by the fp32 model
holding exactly the (dequantized) stored values, which is what the engine computes with.
"""
import argparse
import json
import math
import os
import re
import shutil

import numpy as np
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM

VOCAB = 128
N_IDS = 12
PROMPT_LEN = 5
NEW_TOKENS = 8


def base_dims(**kw):
    d = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=64, moe_intermediate_size=16,
             num_hidden_layers=3, num_attention_heads=4, kv_lora_rank=24, q_lora_rank=32,
             qk_nope_head_dim=12, qk_rope_head_dim=8, v_head_dim=10, n_routed_experts=8,
             n_shared_experts=1, num_experts_per_tok=3, first_k_dense_replace=1,
             max_position_embeddings=512, initializer_range=0.15, rms_norm_eps=1e-6,
             bos_token_id=0, eos_token_id=1, pad_token_id=None)
    d.update(kw)
    d["num_key_value_heads"] = d["num_attention_heads"]  # MLA: one K/V per head
    return d


YARN_V2 = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 32,
           "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}
YARN_V3 = {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32, "beta_fast": 16,
           "beta_slow": 2, "mscale": 1.0, "mscale_all_dim": 0.8}

# name -> (family, config kwargs, options)
FIXTURES = {
    "v2_greedy_noqlora": ("v2", base_dims(q_lora_rank=None, topk_method="greedy", n_shared_experts=2), {}),
    "v2_group_limited_yarn": ("v2", base_dims(topk_method="group_limited_greedy", n_group=4, topk_group=2,
                                              routed_scaling_factor=1.5, attention_bias=True,
                                              rope_scaling=YARN_V2, rope_theta=5000.0), {}),
    "v3_noaux_yarn": ("v3", base_dims(n_group=4, topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True,
                                      rope_scaling=YARN_V3, rope_theta=10000.0, num_nextn_predict_layers=0), {}),
    "v3_halfsplit_tied_noqlora": ("v3", base_dims(q_lora_rank=None, n_group=2, topk_group=1, norm_topk_prob=False,
                                                  rope_interleave=False, tie_word_embeddings=True,
                                                  routed_scaling_factor=1.0, num_nextn_predict_layers=0,
                                                  first_k_dense_replace=2, num_hidden_layers=4), {}),
    "v3_bf16": ("v3", base_dims(n_group=2, topk_group=2, num_nextn_predict_layers=0,
                                rope_scaling=YARN_V3), {"dtype": "bf16"}),
    "v3_sharded": ("v3", base_dims(n_group=4, topk_group=3, num_nextn_predict_layers=0), {"shard": "100KB"}),
    "v3_fp8_blocks": ("v3", base_dims(n_group=4, topk_group=2, num_nextn_predict_layers=0, hidden_size=64,
                                      intermediate_size=80), {"fp8_block": [32, 32]}),
    "v3_mtp": ("v3", base_dims(n_group=4, topk_group=2, num_nextn_predict_layers=1, rope_scaling=YARN_V3,
                               num_hidden_layers=2), {"mtp": True}),
}


def make_model(family, kw, seed):
    torch.manual_seed(seed)
    cls_cfg, cls_model = (DeepseekV2Config, DeepseekV2ForCausalLM) if family == "v2" else \
        (DeepseekV3Config, DeepseekV3ForCausalLM)
    cfg = cls_cfg(**kw)
    model = cls_model(cfg).eval().float()
    with torch.no_grad():
        # Perturb what random init leaves trivial: norm weights (ones) and the V3 correction bias (zeros).
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.05 * torch.randn_like(b))
    return model


def unfuse_experts(sd):
    """transformers 5 keeps experts fused in memory (gate_up_proj [E, 2F, D], down_proj [E, D, F]);
    checkpoints (the release, save_pretrained) store them per expert: mlp.experts.{e}.{gate,up,down}_proj."""
    out = {}
    for k, v in sd.items():
        if k.endswith("mlp.experts.gate_up_proj"):
            base, F = k[: -len("gate_up_proj")], v.shape[1] // 2
            for e in range(v.shape[0]):
                out[f"{base}{e}.gate_proj.weight"] = v[e, :F].clone()
                out[f"{base}{e}.up_proj.weight"] = v[e, F:].clone()
        elif k.endswith("mlp.experts.down_proj"):
            base = k[: -len("down_proj")]
            for e in range(v.shape[0]):
                out[f"{base}{e}.down_proj.weight"] = v[e].clone()
        else:
            out[k] = v
    return out


def fuse_experts(sd):
    out, groups = {}, {}
    for k, v in sd.items():
        m = re.match(r"(.*mlp\.experts\.)(\d+)\.(gate|up|down)_proj\.weight$", k)
        if m:
            groups.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = v
        else:
            out[k] = v
    for base, experts in groups.items():
        E = len(experts)
        out[base + "gate_up_proj"] = torch.stack([torch.cat([experts[e]["gate"], experts[e]["up"]]) for e in range(E)])
        out[base + "down_proj"] = torch.stack([experts[e]["down"] for e in range(E)])
    return out


def round_trip_bf16(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())


def quantize_fp8_blocks(w, block):
    """w [rows, cols] fp32 -> (e4m3 tensor, fp32 scale_inv [ceil(rows/br), ceil(cols/bc)]), DeepSeek-style."""
    br, bc = block
    rows, cols = w.shape
    sr, sc = math.ceil(rows / br), math.ceil(cols / bc)
    scale_inv = torch.empty(sr, sc, dtype=torch.float32)
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(sr):
        for j in range(sc):
            blk = w[i * br:(i + 1) * br, j * bc:(j + 1) * bc]
            s = blk.abs().max().clamp(min=1e-12) / 448.0
            scale_inv[i, j] = s
            q[i * br:(i + 1) * br, j * bc:(j + 1) * bc] = (blk / s).to(torch.float8_e4m3fn)
    return q, scale_inv


def dequantize(q, scale_inv, block):
    br, bc = block
    s = scale_inv.repeat_interleave(br, 0)[: q.shape[0]].repeat_interleave(bc, 1)[:, : q.shape[1]]
    return q.float() * s


def mtp_state(model, cfg, seed):
    """Random weights of one MTP module in the release layout model.layers.{L}.*"""
    torch.manual_seed(seed + 1000)
    block = type(model.model.layers[-1])(cfg, cfg.num_hidden_layers)  # MoE layer
    L = cfg.num_hidden_layers
    sd = {}
    for k, v in unfuse_experts(block.state_dict()).items():
        t = v.clone()
        if t.dim() >= 2 or k.endswith("gate.weight"):
            t = torch.randn_like(t) * 0.15
        elif "norm" in k:
            t = 1.0 + 0.1 * torch.randn_like(t)
        elif k.endswith("e_score_correction_bias"):
            t = 0.05 * torch.randn_like(t)
        sd[f"model.layers.{L}.{k}"] = t
    D = cfg.hidden_size
    sd[f"model.layers.{L}.enorm.weight"] = 1.0 + 0.1 * torch.randn(D)
    sd[f"model.layers.{L}.hnorm.weight"] = 1.0 + 0.1 * torch.randn(D)
    sd[f"model.layers.{L}.eh_proj.weight"] = torch.randn(D, 2 * D) * 0.15
    sd[f"model.layers.{L}.shared_head.norm.weight"] = 1.0 + 0.1 * torch.randn(D)
    # The release also stores the MTP module's copies of the embedding and head (shared in practice).
    sd[f"model.layers.{L}.embed_tokens.weight"] = model.model.embed_tokens.weight.detach().clone()
    sd[f"model.layers.{L}.shared_head.head.weight"] = model.lm_head.weight.detach().clone()
    return sd


def mtp_reference(model, sd, ids):
    """transformers' own MtpLayer on teacher-forced inputs: row i predicts ids[i + 2]."""
    from transformers.modeling_layers import MtpModel
    cfg = model.config
    L = cfg.num_hidden_layers
    mtp = MtpModel(model, 1).eval().float()
    renamed = {}
    for k, v in sd.items():
        rest = k[len(f"model.layers.{L}."):]
        if rest.startswith(("embed_tokens", "shared_head.head")):
            continue
        if rest.startswith(("enorm", "hnorm", "eh_proj")):
            renamed[f"layers.0.{rest}"] = v
        elif rest.startswith("shared_head.norm"):
            renamed["layers.0.post_norm." + rest.split(".", 2)[2]] = v
        else:
            renamed[f"layers.0.mtp_block.{rest}"] = v
    missing, unexpected = mtp.load_state_dict(fuse_experts(renamed), strict=False)
    missing = [m for m in missing if not m.startswith(("embed_tokens", "shared_head"))]
    assert not missing and not unexpected, (missing, unexpected)
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True)
        h = out.hidden_states[-1]  # after the final norm, as MTPCandidateGenerator passes it
        n = len(ids) - 1
        nxt = torch.tensor([ids[1:]])
        pos = torch.arange(1, n + 1)[None]
        emb = model.model.embed_tokens(nxt)
        pe = model.model.rotary_emb(emb, position_ids=pos)
        mask = torch.full((n, n), float("-inf")).triu(1)[None, None]
        hk = mtp.layers[0](emb, h[:, :n], position_embeddings=pe, attention_mask=mask, position_ids=pos,
                           past_key_values=None)
        return model.lm_head(hk)[0].float().numpy()


def greedy(model, prompt):
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
                             eos_token_id=None, use_cache=True)
        cont = out[0, len(prompt):].tolist()
        # Cross-check against plain recomputation and record the smallest top-1 margin (a margin far
        # above fp32 rounding means the continuation is well-defined, not a coin toss).
        seq, margins = list(prompt), []
        for _ in range(NEW_TOKENS):
            lg = model(torch.tensor([seq])).logits[0, -1]
            top = torch.topk(lg, 2).values
            margins.append(float(top[0] - top[1]))
            seq.append(int(lg.argmax()))
    assert seq[len(prompt):] == cont, (seq[len(prompt):], cont)
    return cont, min(margins)


def build(name, family, kw, opts, out_root, seed):
    out = os.path.join(out_root, name)
    shutil.rmtree(out, ignore_errors=True)
    model = make_model(family, kw, seed)
    if opts.get("dtype") == "bf16":
        round_trip_bf16(model)
    rng = np.random.default_rng(seed)
    ids = [int(x) for x in rng.integers(2, model.config.vocab_size, N_IDS)]
    notes = []

    extra_sd = mtp_state(model, model.config, seed) if opts.get("mtp") else {}
    if opts.get("fp8_block"):
        block = opts["fp8_block"]
        sd = unfuse_experts({k: v.detach().clone() for k, v in model.state_dict().items()})
        fp8_sd = {}
        for k, v in sd.items():
            quantize = v.dim() == 2 and k.endswith("proj.weight")
            if quantize:
                q, s = quantize_fp8_blocks(v.float(), block)
                fp8_sd[k] = q
                fp8_sd[k + "_scale_inv"] = s
                sd[k] = dequantize(q, s, block)
            else:
                fp8_sd[k] = v
        model.load_state_dict(fuse_experts(sd))  # reference = exactly the dequantized stored weights
        os.makedirs(out)
        model.config.save_pretrained(out)
        cfg = json.load(open(os.path.join(out, "config.json")))
        cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                      "weight_block_size": block}
        json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
        save_file({k: v.contiguous() for k, v in fp8_sd.items()}, os.path.join(out, "model.safetensors"),
                  metadata={"format": "pt"})
        notes.append(f"FP8 e4m3 projections with {block} block scales; reference uses the dequantized values")
    else:
        save_kwargs = {}
        if opts.get("shard"):
            save_kwargs["max_shard_size"] = opts["shard"]
        if opts.get("dtype") == "bf16":
            model.to(torch.bfloat16).save_pretrained(out, **save_kwargs)
            model.float()
        else:
            model.save_pretrained(out, **save_kwargs)
    if extra_sd:
        save_file({k: v.contiguous() for k, v in extra_sd.items()}, os.path.join(out, "mtp.safetensors"),
                  metadata={"format": "pt"})
        index_path = os.path.join(out, "model.safetensors.index.json")
        if os.path.exists(index_path):
            index = json.load(open(index_path))
        else:
            main = load_file(os.path.join(out, "model.safetensors"))
            index = {"metadata": {}, "weight_map": {k: "model.safetensors" for k in main}}
        for k in extra_sd:
            index["weight_map"][k] = "mtp.safetensors"
        json.dump(index, open(index_path, "w"), indent=2)

    # Reload what was written (transformers' own loader) so the reference sees the stored checkpoint.
    cls = DeepseekV2ForCausalLM if family == "v2" else DeepseekV3ForCausalLM
    if not opts.get("fp8_block"):
        model = cls.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float().numpy()
    np.save(os.path.join(out, "logits.npy"), logits.astype(np.float32))
    cont, margin = greedy(model, ids[:PROMPT_LEN])
    ref = {"ids": ids, "greedy": {"prompt": ids[:PROMPT_LEN], "continuation": cont, "min_top1_margin": margin},
           "family": family, "torch": torch.__version__, "transformers": transformers.__version__,
           "notes": notes, "tolerance": "max|diff| <= 1e-4 * max|logit| (fp32 compute)"}
    if extra_sd:
        mtp = mtp_reference(model, extra_sd, ids)
        np.save(os.path.join(out, "mtp_logits.npy"), mtp.astype(np.float32))
        ref["mtp"] = "mtp_logits.npy row i predicts ids[i + 2]; transformers MtpLayer on hidden_states[-1]"
    json.dump(ref, open(os.path.join(out, "ref.json"), "w"), indent=1)
    print(f"{name}: {len(os.listdir(out))} files, max|logit| {np.abs(logits).max():.3f}, greedy margin {margin:.2e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "fixtures", "models"))
    ap.add_argument("--only", nargs="*", help="fixture names to build (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(4)
    for i, (name, (family, kw, opts)) in enumerate(FIXTURES.items()):
        if args.only and name not in args.only:
            continue
        build(name, family, dict(kw), opts, args.out, seed=1234 + i)


if __name__ == "__main__":
    main()
