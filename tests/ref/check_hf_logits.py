#!/usr/bin/env python3
"""transformers loads an HF directory (e.g. one `dsv export` wrote) and its logits match a .npy that
`dsv logits` wrote for the same ids. Used on the GPU host by scripts/gpu_train_e2e.sh.

    python3 tests/ref/check_hf_logits.py --model DIR --ids 1,2,3 --logits dsv.npy [--device cuda]

Compares in fp32 (the model is loaded with dtype=float32): max|diff| <= tol * max|logit|, tol 1e-4 on
the CPU; on CUDA transformers runs fp32 matmuls (TF32 off) and dsv its fp32 kernels, tol 1e-3 there
(different summation orders over K = hidden size in long reductions). Prints the measured error.
"""
import argparse
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True)
    ap.add_argument("--logits", required=True)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ids = [int(x) for x in args.ids.split(",")]
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(args.device).eval()
    with torch.no_grad():
        ref = model(torch.tensor([ids], device=args.device)).logits[0].float().cpu().numpy()
    ours = np.load(args.logits)
    assert ours.shape == ref.shape, f"shape {ours.shape} vs transformers {ref.shape}"
    err = float(np.abs(ours - ref).max())
    scale = float(np.abs(ref).max())
    tol = 1e-4 if args.device == "cpu" else 1e-3
    ok = err <= tol * scale
    print(f"transformers vs dsv logits ({args.model}): max|diff| {err:.3e}, max|logit| {scale:.3e}, "
          f"relative {err / scale:.3e} (tolerance {tol:g}) -> {'OK' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
