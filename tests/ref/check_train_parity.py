#!/usr/bin/env python3
"""`dsv train` against the PyTorch reference trainer (tests/ref/make_train_fixtures.py) on random small
DeepSeek-V2/V3 configurations (check_random_configs.random_config: sizes, routers, YaRN, rope layouts,
q-LoRA, biases, tied embeddings, bf16 storage, MTP with one or two modules) and random training settings
(seq_len, micro_batch, grad_accum, schedules with warmup, clipping on/off, weight decay, MTP depth,
balance losses, aux-free bias update).

    python3 tests/ref/check_train_parity.py --dsv build/cpu/tools/dsv/dsv --count 10 --seed 1
    python3 tests/ref/check_train_parity.py --dsv build/cuda/tools/dsv/dsv --device cuda --count 10
    python3 tests/ref/check_train_parity.py --reference-only --count 3     # the reference side alone
    python3 tests/ref/check_train_parity.py --dsv ... --recompute mixed     # dsv with none / selective / full

For each configuration it writes a random checkpoint and tokens.bin, runs the reference for --steps
steps, runs
    dsv train --recipe recipe.toml --metrics-jsonl metrics.jsonl
with the same settings (TOML sections model/data/train/optimizer/loss/output as in
src/train/train_config.h), and compares per step loss / mtp_loss / aux_loss (relative --rtol), lr
(relative 1e-6) and grad_norm (relative --grad-norm-rtol). When dsv writes output.out_dir, the final
e_score_correction_bias of every main-model MoE layer is compared too.
Exits non-zero on any failure.
"""
import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile

import torch
from safetensors import safe_open

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_random_configs as crc  # noqa: E402
import make_fixtures as mf  # noqa: E402
import make_train_fixtures as mtf  # noqa: E402

LOSS_KEYS = ("loss", "mtp_loss", "aux_loss")


def random_training(r, family, mtp_modules, steps):
    S = r.choice([6, 8, 12, 16, 24])
    over = {
        "train.seq_len": S, "train.micro_batch": r.choice([1, 2, 3]), "train.grad_accum": r.choice([1, 1, 2, 3]),
        "train.steps": steps, "optimizer.lr": r.choice([5e-4, 1e-3, 3e-3]),
        "optimizer.beta1": r.choice([0.9, 0.8]), "optimizer.beta2": r.choice([0.95, 0.999]),
        "optimizer.eps": r.choice([1e-8, 1e-6]), "optimizer.weight_decay": r.choice([0.0, 0.1]),
        "optimizer.clip_grad": r.choice([0.0, 0.05, 1.0, 1.0]),
        "optimizer.schedule": r.choice(["constant", "cosine", "wsd"]), "optimizer.warmup_steps": r.choice([0, 0, 3]),
        "optimizer.decay_fraction": r.choice([0.1, 0.3]),
        "loss.mtp_depth": (r.randint(1, mtp_modules) if r.random() < 0.8 else 0) if mtp_modules else 0, "loss.mtp_lambda": r.choice([0.3, 0.1]),
        "loss.seq_aux_alpha": 0.0, "loss.expert_aux_alpha": 0.0, "loss.bias_update_gamma": 0.0,
        "data.shuffle": False,
    }
    over["optimizer.min_lr"] = over["optimizer.lr"] * r.choice([0.0, 0.1])
    if family == "v3":
        over["loss.seq_aux_alpha"] = r.choice([0.0, 0.01])
        over["loss.bias_update_gamma"] = r.choice([0.0, 1e-3])
    else:
        over["loss.expert_aux_alpha"] = r.choice([0.0, 0.01])
    over["loss.mtp_depth"] = min(over["loss.mtp_depth"], S - 1)
    return over


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf")
    return json.dumps(str(v))  # a basic TOML string (JSON escaping is valid TOML)


def write_recipe(path, cfg):
    sections = {}
    for key, v in cfg.items():
        sec, name = key.split(".", 1)
        sections.setdefault(sec, {})[name] = v
    with open(path, "w") as f:
        for sec in ("model", "data", "train", "optimizer", "loss", "output"):
            if sec not in sections:
                continue
            f.write(f"[{sec}]\n")
            for name, v in sections[sec].items():
                f.write(f"{name} = {toml_value(v)}\n")
            f.write("\n")


def read_metrics(path):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            obj = json.loads(line)
            if "step" in obj:
                out[int(obj["step"])] = obj
    return [out[k] for k in sorted(out)]


def read_biases(out_dir):
    biases = {}
    for fn in os.listdir(out_dir):
        if fn.endswith(".safetensors"):
            with safe_open(os.path.join(out_dir, fn), "pt") as sf:
                for k in sf.keys():
                    if k.endswith("mlp.gate.e_score_correction_bias"):
                        biases[k] = sf.get_tensor(k).float()
    return biases


def rel(a, b, floor=1e-7):
    return abs(a - b) / max(abs(b), floor)


def dsv_has_train(dsv):
    p = subprocess.run([dsv, "train", "--help"], capture_output=True, text=True)
    return p.returncode == 0 and "recipe" in (p.stdout + p.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsv", help="path to the dsv binary")
    ap.add_argument("--count", type=int, default=10, help="configurations transformers accepts")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--device", default="cpu", help="train.device for dsv (cpu | cuda)")
    ap.add_argument("--rtol", type=float, default=1e-3, help="per-step loss / mtp_loss / aux_loss")
    ap.add_argument("--grad-norm-rtol", type=float, default=1e-2)
    ap.add_argument("--timeout", type=int, default=600, help="seconds per dsv run")
    ap.add_argument("--keep", help="keep every configuration's directory under this path")
    ap.add_argument("--recompute", default="none", choices=["none", "selective", "full", "mixed"],
                    help="train.recompute for dsv (mixed: one of the three per configuration)")
    ap.add_argument("--bf16-moments", action="store_true",
                    help="optimizer.bf16_moments for dsv (then compare with a looser --rtol)")
    ap.add_argument("--reference-only", action="store_true", help="run the reference side only (no dsv)")
    args = ap.parse_args()
    if not args.reference_only:
        if not args.dsv:
            ap.error("--dsv is required unless --reference-only")
        if not dsv_has_train(args.dsv):
            print(f"{args.dsv} has no `train --recipe` subcommand yet; nothing compared (try --reference-only)")
            sys.exit(2)
    torch.set_num_threads(4)
    r = random.Random(args.seed)
    root = args.keep or tempfile.mkdtemp(prefix="train_parity_")
    os.makedirs(root, exist_ok=True)
    failures, worst = [], {k: 0.0 for k in LOSS_KEYS + ("grad_norm", "bias")}
    accepted, i = 0, -1
    try:
        while accepted < args.count and i < 20 * args.count:
            i += 1
            family, kw, opts = crc.random_config(r)
            name = f"cfg{i:03d}"
            d = os.path.join(root, name)
            shutil.rmtree(d, ignore_errors=True)
            try:
                mf.build(name, family, kw, opts, root, seed=args.seed * 1000 + i)
            except Exception as e:  # a config transformers itself rejects is skipped, not counted
                print(f"{name}: transformers rejected it ({type(e).__name__}: {str(e).strip().splitlines()[-1]}); "
                      "skipped, not counted")
                continue
            accepted += 1
            mtp_modules = 1 if opts.get("mtp") else 0
            if mtp_modules and opts.get("dtype") != "bf16" and r.random() < 0.4:
                mtp_modules = mtf.add_mtp_module(d, seed=args.seed * 1000 + i + 500)
            over = random_training(r, family, mtp_modules, args.steps)
            S = over["train.seq_len"]
            windows = args.steps * over["train.micro_batch"] * over["train.grad_accum"]
            n_win = r.choice([max(1, windows // 2), windows + 3])  # with and without wrapping
            tokens = mtf.structured_tokens(n_win * S + 1 + r.randint(0, S - 1), kw["vocab_size"], args.seed * 77 + i)
            tok_path = os.path.join(d, "tokens.bin")
            tokens.astype("<i4").tofile(tok_path)
            cfg = mtf.full_config({**over, "model.init_from": d, "data.tokens": tok_path})
            desc = (f"{family} L{kw['num_hidden_layers']} D{kw['hidden_size']} E{kw['n_routed_experts']}"
                    f"/G{kw.get('n_group')}/K{kw['num_experts_per_tok']} S{S} B{over['train.micro_batch']}"
                    f" A{over['train.grad_accum']} {over['optimizer.schedule']} clip {over['optimizer.clip_grad']}"
                    f" mtp {over['loss.mtp_depth']}/{mtp_modules} seq_aux {over['loss.seq_aux_alpha']}"
                    f" exp_aux {over['loss.expert_aux_alpha']} gamma {over['loss.bias_update_gamma']} {opts}")
            try:
                ref, records = mtf.run_reference(d, mtf.read_tokens(tok_path), cfg)
            except Exception as e:
                print(f"{name}: reference failed ({type(e).__name__}: {e}) [{desc}]")
                failures.append(name)
                continue
            json.dump(records, open(os.path.join(d, "reference_losses.json"), "w"), indent=1)
            if args.reference_only:
                print(f"{name}: reference loss {records[0]['loss']:.4f} -> {records[-1]['loss']:.4f} [{desc}]")
                continue
            out_dir = os.path.join(d, "trained")
            metrics = os.path.join(d, "metrics.jsonl")
            recipe = dict(cfg)
            recipe.update({"train.device": args.device, "output.metrics_jsonl": metrics, "output.out_dir": out_dir})
            recipe["train.recompute"] = (random.Random(args.seed * 7919 + i).choice(["none", "selective", "full"])
                                         if args.recompute == "mixed" else args.recompute)
            if args.bf16_moments:
                recipe["optimizer.bf16_moments"] = True
            desc += f" recompute {recipe['train.recompute']}"
            recipe_path = os.path.join(d, "recipe.toml")
            write_recipe(recipe_path, recipe)
            cmd = [args.dsv, "train", "--recipe", recipe_path, "--metrics-jsonl", metrics]
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"{name}: FAIL dsv train timed out [{desc}]")
                failures.append(name)
                continue
            if p.returncode != 0:
                print(f"{name}: FAIL dsv train exited {p.returncode}: {(p.stderr or p.stdout).strip()[-800:]} [{desc}]")
                failures.append(name)
                continue
            ours = read_metrics(metrics)
            errs = {k: 0.0 for k in LOSS_KEYS + ("grad_norm", "lr")}
            problems = []
            if len(ours) != len(records):
                problems.append(f"{len(ours)} metric lines for {len(records)} steps")
            for a, b in zip(ours, records):
                for k in LOSS_KEYS:
                    e = rel(float(a.get(k, 0.0)), b[k], floor=1e-6)
                    errs[k] = max(errs[k], e)
                errs["grad_norm"] = max(errs["grad_norm"], rel(float(a["grad_norm"]), b["grad_norm"]))
                errs["lr"] = max(errs["lr"], rel(float(a["lr"]), b["lr"], floor=1e-12))
            bias_err = None
            if over["loss.bias_update_gamma"] > 0 and os.path.isdir(out_dir):
                want, got = ref.biases(), read_biases(out_dir)
                if got and want:  # no MoE layer with a router bias (all dense, or V2): nothing to compare
                    # each update moves a bias by exactly gamma; allow a float32 rounding, not one flipped sign
                    bias_err = max(float((got[k] - want[k]).abs().max()) for k in want) / over["loss.bias_update_gamma"]
                    worst["bias"] = max(worst["bias"], bias_err)
                    if bias_err > 0.5:
                        problems.append(f"final router bias off by {bias_err:.2f} gamma")
            for k in LOSS_KEYS:
                worst[k] = max(worst[k], errs[k])
                if errs[k] > args.rtol:
                    problems.append(f"{k} rel.err {errs[k]:.1e}")
            worst["grad_norm"] = max(worst["grad_norm"], errs["grad_norm"])
            if errs["grad_norm"] > args.grad_norm_rtol:
                problems.append(f"grad_norm rel.err {errs['grad_norm']:.1e}")
            if errs["lr"] > 1e-6:
                problems.append(f"lr rel.err {errs['lr']:.1e}")
            status = "ok  " if not problems else "FAIL"
            print(f"{name}: {status} loss {errs['loss']:.1e} mtp {errs['mtp_loss']:.1e} aux {errs['aux_loss']:.1e} "
                  f"grad_norm {errs['grad_norm']:.1e}" + (f" bias {bias_err:.2f}g" if bias_err is not None else "")
                  + (f" -- {'; '.join(problems)}" if problems else "") + f" [{desc}]")
            if problems:
                failures.append(name)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if not args.reference_only:
        print("worst relative errors: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
    print(f"{len(failures)} failure(s) {failures}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
