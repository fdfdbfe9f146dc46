#!/usr/bin/env python3
"""Side-by-side inference benchmark: `dsv bench infer` and transformers on the identical config, in
the same run, on the same GPU. transformers runs in bf16 with sdpa attention and grouped_mm experts
(the fastest eager setup it offers), random weights; timings are medians with CUDA synchronization.

    python3 bench/compare_hf_infer.py --dsv build/cuda/tools/dsv/dsv \
        --config ../shared/configs/bench/bench-16b-l4.json --prompt-len 512 --gen-len 64 [--batch 64]

With --batch B both decode B sequences of the same prompt length together (transformers: one
`generate` over a [B, P] batch; dsv: B prefills, then BatchDecoder steps). Tokens/s count all B.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM


def hf_bench(config_path, batch, prompt_len, gen_len, repeats):
    cfg_dict = json.load(open(config_path))
    cfg_dict.pop("quantization_config", None)  # random bf16 weights, no FP8 kernels
    model_type = cfg_dict.pop("model_type")
    cfg = AutoConfig.for_model(model_type, **cfg_dict)
    cfg.num_nextn_predict_layers = 0
    kwargs = dict(attn_implementation="sdpa", dtype=torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(cfg, experts_implementation="grouped_mm", **kwargs)
        experts = "grouped_mm"
    except (TypeError, ValueError) as e:
        print(f"transformers: grouped_mm experts unavailable ({e}); using the default", file=sys.stderr)
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(cfg, **kwargs)
        experts = "default"
    model.eval()
    gen = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (batch, prompt_len), device="cuda", generator=gen)

    def timed(fn):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    with torch.no_grad():
        # Warm-up at the measured sizes: the first full-length call pays one-time costs (kernel selection
        # and autotuning, allocator growth) that an 8-token warm-up does not; measured 6x on the first
        # config of a run (2026-11-23), which made transformers look slower than it is.
        model(ids, use_cache=True)
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0)
        prefill = statistics.median(timed(lambda: model(ids, use_cache=True)) for _ in range(repeats))
        total = statistics.median(
            timed(lambda: model.generate(ids, max_new_tokens=gen_len, min_new_tokens=gen_len, do_sample=False,
                                         eos_token_id=None, pad_token_id=0))
            for _ in range(repeats))
    decode = max(total - prefill, 1e-9)
    return {"prefill_tokens_per_s": batch * prompt_len / prefill, "ttft_ms": prefill * 1e3,
            "decode_tokens_per_s": batch * gen_len / decode, "tpot_ms": decode * 1e3 / gen_len, "experts": experts}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsv", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--gen-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dsv-args", default="", help="extra `dsv bench infer` flags, e.g. --dsv-args=--tf32")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "dsv.json")
        subprocess.run([args.dsv, "bench", "infer", "--config", args.config, "--batch", str(args.batch),
                        "--prompt-len", str(args.prompt_len),
                        "--gen-len", str(args.gen_len), "--device", "cuda", "--json", out] + args.dsv_args.split(),
                       check=True)
        ours = json.load(open(out))
    theirs = hf_bench(args.config, args.batch, args.prompt_len, args.gen_len, args.repeats)
    print(f"\n{os.path.basename(args.config)} on {torch.cuda.get_device_name()}, batch {args.batch}, prompt {args.prompt_len}, "
          f"gen {args.gen_len}; torch {torch.__version__}, transformers {transformers.__version__} "
          f"(bf16, sdpa, {theirs['experts']} experts); dsv {ours['weights_dtype']} weights, "
          f"{ours.get('precision', 'fp32')} products")
    print(f"{'':24}{'dsv':>14}{'transformers':>16}{'dsv / hf':>10}")
    for key, label in (("prefill_tokens_per_s", "prefill tokens/s"), ("decode_tokens_per_s", "decode tokens/s")):
        print(f"{label:24}{ours[key]:>14.1f}{theirs[key]:>16.1f}{ours[key] / theirs[key]:>10.2f}")
    for key, label in (("ttft_ms", "time to first token ms"), ("tpot_ms", "time per step ms")):
        print(f"{label:24}{ours[key]:>14.2f}{theirs[key]:>16.2f}{theirs[key] / ours[key]:>10.2f}")
    if ours.get("roofline_bytes_per_s"):
        print(f"dsv decode reads {ours['bytes_per_decode_step'] / 2**20:.1f} MiB per step: "
              f"{100 * ours['achieved_bytes_per_s'] / ours['roofline_bytes_per_s']:.1f}% of the measured copy bandwidth "
              f"({ours['roofline_bytes_per_s'] / 1e12:.2f} TB/s)")


if __name__ == "__main__":
    main()
