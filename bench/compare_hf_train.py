#!/usr/bin/env python3
"""Side-by-side training benchmark: `dsv bench train` and transformers on the identical config, in
the same run, on the same GPU. transformers trains a random-init model (seeded) with sdpa attention
and grouped_mm experts (as bench/compare_hf_infer.py selects them) in two setups:

  mixed         fp32 master parameters, forward/backward under torch.autocast(bf16),
                torch.optim.AdamW(fused=True)
  bf16_compile  parameters in bf16 (model.to(torch.bfloat16)), torch.compile(model),
                torch.optim.AdamW(fused=True)

A step of each: forward on B random sequences of S tokens, mean next-token cross-entropy over all
B x S targets (transformers' own loss, labels given as shift_labels), backward, global gradient
clipping (--clip, as the dsv trainer does; 0 turns it off), AdamW (betas 0.9/0.95, eps 1e-8,
weight decay 0.1 on parameters of >= 2 dimensions, none on norms and biases: recipes/debug.toml's
optimizer), zero_grad. --warmup steps first, then --steps timed steps between two
torch.cuda.synchronize(); tokens/s = B x S x steps / seconds. Peak memory is
torch.cuda.max_memory_allocated() over the setup (statistics reset and the previous model freed
and torch.cuda.empty_cache() called between setups). A setup that fails (out of memory, a compile
error) reports its error in its row and the run goes on. dsv runs first, in its own process, before
this process touches the GPU.

MFU = tokens/s x FLOPs per token / peak FLOP/s, with FLOPs per token exactly as
src/train/flops.cpp train_flops_per_token (mirrored by train_flops_per_token below):

  6 x N_matmul                                     every weight: 2 FLOPs forward, 4 backward
      N_matmul = params_active - V x D             (src/model/config.cpp params_active: embedding,
                                                   LM head, final norm, and per layer its norms,
                                                   MLA, dense FFN or router (+ V3 bias) + shared
                                                   experts + K routed experts; minus the embedding,
                                                   a row lookup; tied embeddings keep the matrix
                                                   as the LM head)
+ L x 3 x 2 x H x (Dqk + Dv) x (S + 1) / 2         causal attention: q.k over Dqk and p.v over Dv,
                                                   2 FLOPs per multiply-add, (S + 1) / 2 keys per
                                                   query on average; backward = 2 x forward
+ sum_{k=1..mtp_depth} (S - k) / S x [6 x (active MTP module + V x D)
                                      + 3 x 2 x H x (Dqk + Dv) x (S - k + 1) / 2]

transformers trains no MTP module, so its rows use mtp_depth 0 (the bench configs declare none).
Peak: dense bf16 tensor-core FLOP/s by the GPU's name as src/train/flops.cpp device_peak_flops
(H100 SXM / H200 / H800 989e12, H100 PCIe 756e12, A100 312e12); --peak-flops overrides; on the
CPU MFU is not reported.

    python3 bench/compare_hf_train.py --config ../shared/configs/bench/bench-16b-l4.json \
        --batch 2 --seq 4096 --warmup 3 --steps 10 --json out/compare_train.json
    # CPU smoke test of the transformers side:
    python3 bench/compare_hf_train.py --config tests/fixtures/models/v3_mtp/config.json \
        --device cpu --batch 1 --seq 32 --steps 2 --warmup 1 --skip-dsv
"""
import argparse
import gc
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

SETUPS = ("mixed", "bf16_compile")
ADAMW = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
WEIGHT_DECAY = 0.1


# ---------------------------------------------------------------------------------------------
# FLOPs: a line-by-line mirror of src/model/config.cpp (parameter counts, with its defaults for
# missing or null keys) and src/train/flops.cpp (train_flops_per_token, device_peak_flops).
# ---------------------------------------------------------------------------------------------

def dsv_model_config(j):
    """The fields of dsv's ModelConfig the FLOP count reads, parsed as parse_model_config does."""
    v3 = j["model_type"] == "deepseek_v3"

    def get(key, fallback):
        v = j.get(key)
        return fallback if v is None else v

    return dict(
        v3=v3, V=int(j["vocab_size"]), D=int(j["hidden_size"]), F=int(j["intermediate_size"]),
        L=int(j["num_hidden_layers"]), H=int(j["num_attention_heads"]), C=int(j["kv_lora_rank"]),
        Dn=int(j["qk_nope_head_dim"]), R=int(j["qk_rope_head_dim"]), Dv=int(j["v_head_dim"]),
        # an explicit null means a plain q_proj; a missing key takes the class default
        Q=int(get("q_lora_rank", 0)) if "q_lora_rank" in j else 1536,
        first_dense=int(get("first_k_dense_replace", 3 if v3 else 0)),
        Fe=int(get("moe_intermediate_size", 2048 if v3 else 1407)),
        E=int(get("n_routed_experts", 256 if v3 else 64)),
        n_shared=int(get("n_shared_experts", 1 if v3 else 2)),
        K=int(get("num_experts_per_tok", 0)),
        attention_bias=bool(get("attention_bias", False)),
        mlp_bias=(not v3) and bool(get("mlp_bias", False)),
        tie=bool(get("tie_word_embeddings", False)),
        nextn=int(get("num_nextn_predict_layers", 0)),
    )


def _attention_params(c):
    D, H, Q, C, R, Dn, Dv = c["D"], c["H"], c["Q"], c["C"], c["R"], c["Dn"], c["Dv"]
    bias = 1 if c["attention_bias"] else 0
    n = (D * Q + bias * Q + Q + Q * H * (Dn + R)) if Q > 0 else D * H * (Dn + R)
    n += D * (C + R) + bias * (C + R) + C + C * H * (Dn + Dv)
    n += H * Dv * D + bias * D
    return n


def _mlp_params(c, F):
    return 3 * c["D"] * F + ((2 * F + c["D"]) if c["mlp_bias"] else 0)


def _is_moe_layer(c, layer):
    return layer >= c["first_dense"]


def _layer_params(c, layer, experts_counted):
    n = 2 * c["D"] + _attention_params(c)
    if not _is_moe_layer(c, layer):
        return n + _mlp_params(c, c["F"])
    n += c["E"] * c["D"]  # router
    if c["v3"]:
        n += c["E"]  # e_score_correction_bias
    n += experts_counted * _mlp_params(c, c["Fe"])
    n += _mlp_params(c, c["Fe"] * c["n_shared"])
    return n


def params_total(c):
    n = c["V"] * c["D"] * (1 if c["tie"] else 2) + c["D"]
    return n + sum(_layer_params(c, l, c["E"]) for l in range(c["L"]))


def params_active(c):
    n = c["V"] * c["D"] * (1 if c["tie"] else 2) + c["D"]
    return n + sum(_layer_params(c, l, c["K"]) for l in range(c["L"]))


def params_mtp(c):
    return 3 * c["D"] + 2 * c["D"] * c["D"] + _layer_params(c, c["L"], c["E"])


def _attention_flops(c, keys):
    """Per query row attending to `keys` keys: forward 2 x H x (Dqk + Dv) x keys, backward twice that."""
    return 3.0 * 2.0 * c["H"] * (c["Dn"] + c["R"] + c["Dv"]) * keys


def train_flops_per_token(c, seq_len, mtp_depth=0):
    """Training FLOPs per token, as src/train/flops.cpp train_flops_per_token (see the module doc)."""
    S, V, D = float(seq_len), float(c["V"]), float(c["D"])
    matmul = params_active(c) - (0.0 if c["tie"] else V * D)
    flops = 6.0 * matmul
    flops += c["L"] * _attention_flops(c, (S + 1.0) / 2.0)
    mtp_active = params_mtp(c)
    if _is_moe_layer(c, c["L"]):
        mtp_active -= (c["E"] - c["K"]) * _mlp_params(c, c["Fe"])
    for k in range(1, mtp_depth + 1):
        if k >= seq_len:
            break
        rows = S - k
        flops += rows / S * (6.0 * (mtp_active + V * D) + _attention_flops(c, (rows + 1.0) / 2.0))
    return flops


def device_peak_flops(device, gpu_name=""):
    """Dense bf16 peak FLOP/s as src/train/flops.cpp device_peak_flops (0: unknown, no MFU)."""
    if device != "cuda":
        return 0.0
    if not gpu_name:
        return 989e12
    if "H100" in gpu_name:
        return 756e12 if "PCIe" in gpu_name else 989e12
    if "H200" in gpu_name or "H800" in gpu_name:
        return 989e12
    if "A100" in gpu_name:
        return 312e12
    return 0.0


# ---------------------------------------------------------------------------------------------
# dsv
# ---------------------------------------------------------------------------------------------

def _last_json_object(text):
    """The last top-level JSON object printed on stdout (for a --json that prints instead of writing)."""
    dec = json.JSONDecoder()
    found = None
    i = text.find("{")
    while i != -1:
        try:
            obj, end = dec.raw_decode(text, i)
            if isinstance(obj, dict):
                found = obj
            i = text.find("{", end)
        except ValueError:
            i = text.find("{", i + 1)
    return found


def _tail(text, n=400):
    text = (text or "").strip()
    return text if len(text) <= n else "..." + text[-n:]


def dsv_bench(args):
    """Runs `dsv bench train ... --json`; returns its JSON (keys tolerated missing) or {"error": ...}.

    `dsv bench infer --json` takes a file path, so that form is tried first; if the CLI rejects the
    extra argument (a bare --json flag printing JSON to stdout), the run is repeated that way."""
    base = [args.dsv, "bench", "train", "--config", args.config, "--batch", str(args.batch), "--seq", str(args.seq),
            "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device] + args.dsv_args.split()
    if not os.path.exists(args.dsv):
        return {"error": f"{args.dsv}: not found (build it, or pass --dsv PATH or --skip-dsv)"}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "dsv_train.json")
        attempts = [base + ["--json", out], base + ["--json"]]
        for n, cmd in enumerate(attempts):
            print("running: " + " ".join(cmd), file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            sys.stderr.write(p.stderr)
            if p.returncode != 0:
                rejected = any(s in p.stderr for s in ("not expected", "Extra", "extra", "ExtrasError"))
                if n == 0 and rejected:
                    continue
                return {"error": f"dsv exited with {p.returncode}: {_tail(p.stderr or p.stdout)}", "command": cmd}
            result = None
            if os.path.exists(out):
                with open(out) as f:
                    result = json.load(f)
            else:
                result = _last_json_object(p.stdout)
            if result is None:
                return {"error": f"dsv wrote no JSON (stdout: {_tail(p.stdout)})", "command": cmd}
            result.setdefault("wall_seconds", wall)
            result["command"] = cmd
            return result
    return {"error": "unreachable"}


# ---------------------------------------------------------------------------------------------
# transformers
# ---------------------------------------------------------------------------------------------

def build_hf_model(cfg_dict, device, seed):
    """Random-init model from the config in fp32 on the device, sdpa attention, grouped_mm experts."""
    cfg_dict = dict(cfg_dict)
    cfg_dict.pop("quantization_config", None)  # random weights, no FP8 kernels
    model_type = cfg_dict.pop("model_type")
    cfg = AutoConfig.for_model(model_type, **cfg_dict)
    cfg.num_nextn_predict_layers = 0  # transformers trains no MTP module
    cfg.use_cache = False
    kwargs = dict(attn_implementation="sdpa", dtype=torch.float32)
    torch.manual_seed(seed)
    try:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, experts_implementation="grouped_mm", **kwargs)
        experts = "grouped_mm"
    except (TypeError, ValueError) as e:
        print(f"transformers: grouped_mm experts unavailable ({e}); using the default", file=sys.stderr)
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, **kwargs)
        experts = "default"
    return model, cfg, experts


def make_optimizer(model):
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, fused=True, **ADAMW)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def hf_train(setup, cfg_dict, args):
    """One transformers setup; returns its measurements (raises on failure)."""
    device = args.device
    model, cfg, experts = build_hf_model(cfg_dict, device, args.seed)
    hf_params = sum(p.numel() for p in model.parameters())
    model.train()
    if setup == "mixed":
        autocast = lambda: torch.autocast(device, dtype=torch.bfloat16)
        step_model = model
    elif setup == "bf16_compile":
        model.to(torch.bfloat16)
        autocast = None
        step_model = torch.compile(model)
    else:
        raise ValueError(f"unknown setup {setup!r} (expected one of {', '.join(SETUPS)})")
    opt = make_optimizer(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    gen = torch.Generator(device=device).manual_seed(args.seed + 1)
    n_batches = args.warmup + args.steps
    batches = torch.randint(0, cfg.vocab_size, (n_batches, args.batch, args.seq + 1), device=device, generator=gen)

    def step(i):
        x, y = batches[i, :, :-1].contiguous(), batches[i, :, 1:].contiguous()
        if autocast is not None:
            with autocast():
                loss = step_model(input_ids=x, labels=y, shift_labels=y, use_cache=False).loss
        else:
            loss = step_model(input_ids=x, labels=y, shift_labels=y, use_cache=False).loss
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(params, args.clip, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    losses = []
    t_warm = time.perf_counter()
    for i in range(args.warmup):
        losses.append(step(i))
    _sync(device)
    warmup_s = time.perf_counter() - t_warm
    t0 = time.perf_counter()
    for i in range(args.warmup, n_batches):
        losses.append(step(i))
    _sync(device)
    seconds = time.perf_counter() - t0
    losses = [float(l) for l in losses]
    if not all(math.isfinite(l) for l in losses):
        raise FloatingPointError(f"non-finite loss: {losses}")
    tokens = args.batch * args.seq * args.steps
    result = {"tokens_per_second": tokens / seconds, "step_seconds": seconds / args.steps, "warmup_seconds": warmup_s,
              "experts": experts, "hf_parameters": hf_params, "loss_first": losses[0], "loss_last": losses[-1],
              "param_dtype": str(next(model.parameters()).dtype).replace("torch.", "")}
    if device == "cuda":
        result["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    return result


def free_device(device):
    gc.collect()
    try:
        torch._dynamo.reset()
    except Exception:  # noqa: BLE001 (best effort)
        pass
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def run_setup(setup, cfg_dict, args):
    try:
        return hf_train(setup, cfg_dict, args)
    except Exception as e:  # noqa: BLE001 (an OOM or a compile error is a result to report)
        msg = f"{type(e).__name__}: {str(e).strip()}"
        if args.verbose:
            traceback.print_exc()
        else:
            print(f"transformers {setup} failed: {msg[:2000]}", file=sys.stderr)
        return {"error": msg}


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

def _fmt(v, spec):
    """format(v, spec), or a dash right-aligned to the spec's width when v is missing."""
    if v is None:
        width = re.match(r"\d*", spec).group()
        return format("-", ">" + width)
    return format(v, spec)


def _count(n):
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3f} {unit}"
    return str(n)


def _short_error(msg, n=110):
    line = msg.splitlines()[0] if msg else ""
    return line if len(line) <= n else line[:n - 3] + "..."


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="an HF config.json (e.g. ../shared/configs/bench/bench-16b-l4.json)")
    ap.add_argument("--dsv", default="build/cuda/tools/dsv/dsv")
    ap.add_argument("--skip-dsv", action="store_true", help="run transformers only")
    ap.add_argument("--dsv-args", default="", help="extra `dsv bench train` flags, e.g. \"--tf32\"")
    ap.add_argument("--setups", default=",".join(SETUPS), help="comma-separated subset of " + ",".join(SETUPS))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a smoke test with a tiny config")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clip (0: none)")
    ap.add_argument("--peak-flops", type=float, default=None,
                    help="peak FLOP/s for MFU (default: by the GPU's name, as src/train/flops.cpp)")
    ap.add_argument("--json", dest="json_out", default=None, help="write all results to this file")
    ap.add_argument("--verbose", action="store_true", help="print full tracebacks of failed setups")
    args = ap.parse_args()
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    for s in setups:
        if s not in SETUPS:
            ap.error(f"--setups: unknown setup {s!r} (expected {', '.join(SETUPS)})")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device (use --device cpu for a smoke test)")
    if min(args.batch, args.seq, args.steps) < 1 or args.warmup < 0:
        ap.error("--batch, --seq, --steps must be >= 1 and --warmup >= 0")

    with open(args.config) as f:
        cfg_dict = json.load(f)
    c = dsv_model_config(cfg_dict)
    flops_token = train_flops_per_token(c, args.seq, 0)

    # dsv first, in its own process, before this process holds GPU memory.
    ours = None if args.skip_dsv else dsv_bench(args)

    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    peak = args.peak_flops if args.peak_flops is not None else device_peak_flops(args.device, gpu)
    theirs = {}
    for s in setups:
        print(f"transformers {s}: {args.warmup} warm-up + {args.steps} timed steps...", file=sys.stderr, flush=True)
        theirs[s] = run_setup(s, cfg_dict, args)
        free_device(args.device)  # here, once the failed setup's traceback (and its tensors) is gone
        r = theirs[s]
        if "error" not in r:
            r["mfu"] = r["tokens_per_second"] * flops_token / peak if peak > 0 else None

    if ours is not None and "error" not in ours and ours.get("mfu") is None and peak > 0 \
            and ours.get("tokens_per_second") is not None:
        # dsv did not report MFU: this script's formula (mtp_depth 0; dsv may train the config's MTP modules)
        ours["mfu_by_script"] = ours["tokens_per_second"] * flops_token / peak

    # ---- print
    name = os.path.basename(args.config)
    print(f"\n{name} on {gpu}: batch {args.batch} x seq {args.seq}, {args.warmup} warm-up + {args.steps} timed steps; "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"parameters {_count(params_total(c))} total, {_count(params_active(c))} active per token "
          f"(dsv count); FLOPs/token {flops_token:.4g}; "
          + (f"peak {peak / 1e12:.0f} TFLOP/s" if peak > 0 else "no peak known: MFU not reported"))
    # transformers holds V3's e_score_correction_bias as a buffer; dsv's count includes it.
    buffers = (c["L"] - min(c["first_dense"], c["L"])) * c["E"] if c["v3"] else 0
    for s in setups:
        n = theirs[s].get("hf_parameters")
        if n is not None and n + buffers != params_total(c):
            print(f"warning: transformers' {s} model has {n} parameters (+{buffers} router bias buffers), "
                  f"dsv counts {params_total(c)}: the FLOP count may not describe it")
    print("MFU = tokens/s x FLOPs/token / peak;  FLOPs/token = 6 x (params_active - V x D embedding lookup) "
          "+ L x 3 x 2 x H x (Dqk + Dv) x (S + 1) / 2  (src/train/flops.cpp, mtp_depth 0)")
    if c["nextn"] > 0:
        print(f"note: the config declares {c['nextn']} MTP module(s); transformers trains none (its FLOPs use "
              f"mtp_depth 0), dsv may train them (its own MFU then counts them)")
    rows = []
    if ours is not None:
        rows.append(("dsv", ours))
    for s in setups:
        rows.append((f"hf {s}", theirs[s]))
    print(f"{'':18}{'tokens/s':>12}{'MFU':>9}{'peak mem GiB':>14}{'step s':>10}  notes")
    for label, r in rows:
        if "error" in r:
            print(f"{label:18}{'failed':>12}{'':9}{'':14}{'':10}  {_short_error(r['error'])}")
            continue
        mfu = r.get("mfu", r.get("mfu_by_script"))
        mem = r.get("peak_memory_bytes")
        notes = []
        if label.startswith("hf"):
            notes.append(f"{r['param_dtype']} params, {r['experts']} experts, loss {r['loss_first']:.3f} -> "
                         f"{r['loss_last']:.3f}")
        elif "mfu_by_script" in r:
            notes.append("MFU by this script's formula")
        print(f"{label:18}{_fmt(r.get('tokens_per_second'), '12.1f')}"
              f"{_fmt(None, '9') if mfu is None else format(100 * mfu, '8.1f') + '%'}"
              f"{_fmt(None if mem is None else mem / 2**30, '14.2f')}{_fmt(r.get('step_seconds'), '10.3f')}  "
              + "; ".join(notes))
    if ours is not None and "error" not in ours:
        print(f"\n{'dsv / transformers':18}{'tokens/s':>12}{'MFU':>9}{'peak mem':>14}")
        for s in setups:
            r = theirs[s]
            if "error" in r:
                print(f"{'vs ' + s:18}{'-':>12}{'-':>9}{'-':>14}  (transformers failed)")
                continue

            def ratio(a, b):
                return None if a is None or b in (None, 0) else a / b
            our_mfu = ours.get("mfu", ours.get("mfu_by_script"))
            print(f"{'vs ' + s:18}{_fmt(ratio(ours.get('tokens_per_second'), r['tokens_per_second']), '12.2f')}"
                  f"{_fmt(ratio(our_mfu, r.get('mfu')), '9.2f')}"
                  f"{_fmt(ratio(ours.get('peak_memory_bytes'), r.get('peak_memory_bytes')), '14.2f')}")
    if "mixed" in theirs and "error" not in theirs["mixed"] and theirs["mixed"]["experts"] == "grouped_mm":
        print("note (mixed): transformers' grouped_mm casts the expert input to the weight dtype and is not "
              "autocast-enabled, so with fp32 master weights the routed experts run in fp32")

    if args.json_out:
        out = {"config": args.config, "gpu": gpu, "device": args.device, "batch": args.batch, "seq": args.seq,
               "warmup": args.warmup, "steps": args.steps, "clip": args.clip, "seed": args.seed,
               "torch": torch.__version__, "transformers": transformers.__version__,
               "params_total": params_total(c), "params_active": params_active(c),
               "flops_per_token": flops_token, "peak_flops": peak, "dsv": ours, "transformers_setups": theirs}
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
        print(f"results written to {args.json_out}")


if __name__ == "__main__":
    main()
