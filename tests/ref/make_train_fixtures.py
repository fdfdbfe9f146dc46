#!/usr/bin/env python3
"""PyTorch reference trainer for docs/TRAINING.md, and the training fixtures built with it.

The reference runs transformers 5.17's DeepseekV2ForCausalLM / DeepseekV3ForCausalLM in float32
(attn_implementation="eager", experts_implementation="eager") on the CPU; MTP modules are
transformers' MtpLayer (modeling_layers.MtpModel) called teacher-forced, exactly as
tests/ref/make_fixtures.py's mtp_reference does, but with gradients.

    python3 tests/ref/make_train_fixtures.py fixtures [--only v2_yarn ...]   # tests/fixtures/train/<case>/
    python3 tests/ref/make_train_fixtures.py check                          # self-checks, prints a summary
    python3 tests/ref/make_train_fixtures.py run --model DIR --tokens FILE --out DIR [--set key=value ...]

Each case directory holds
    train.json               hyperparameters as TrainConfig keys ("config": {"train.seq_len": 16, ...}),
                             the initial checkpoint (relative to the repo root), the token file, notes
    tokens.bin               flat little-endian int32 token ids
    losses.json              per step: step, loss, mtp_loss, aux_loss, grad_norm, lr (before the update)
    grads_step1.safetensors  gradient of the TOTAL loss at the initial weights, step 1 (mean over its
                             micro-batches), before clipping, in checkpoint names (experts per expert,
                             MTP module k at model.layers.{L + k - 1}.*, tied embedding once)
    grads_step1_aux.safetensors  (balance-loss cases) the gradient of aux_loss alone for every router
                             weight model.layers.L.mlp.gate.weight
    bias_final.safetensors   (bias_update_gamma > 0) e_score_correction_bias of each main-model MoE layer
                             after the last step

Where docs/TRAINING.md is silent, the reference chooses:
  - every trained parameter takes the AdamW update every step, with a zero gradient where the step did
    not reach it (an expert no token chose): moments decay and weight decay applies. This is what
    torch.optim.AdamW does to transformers' fused expert tensors [E, 2F, D] / [E, D, F].
  - loss.seq_aux_alpha always means the sigmoid-normalized (V3) formula and loss.expert_aux_alpha the
    softmax (V2) one, whatever the model family; the fixtures only pair them with their own family.
  - a skipped (non-finite) step still counts for the lr schedule (step s is the s-th call), but AdamW's
    own step counter (bias correction) only advances on applied updates, as torch does.
  - WSD's round(decay_fraction * N) rounds halves away from zero (std::round), not to even.
  - attention_dropout must be 0 (the document defines no dropout); routing is the same in train mode.
  - MTP modules beyond loss.mtp_depth are not trained; the MTP blocks' routers take no balance loss and
    no bias update (main-model MoE layers only).
"""
import argparse
import glob
import json
import math
import os
import re
import sys

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, DeepseekV2ForCausalLM, DeepseekV3ForCausalLM
from transformers.modeling_layers import MtpModel

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import make_fixtures as mf  # noqa: E402  (fuse_experts / unfuse_experts)

# ---------------------------------------------------------------------------------------------
# Hyperparameters: the TrainConfig keys (src/train/train_config.h) the reference understands.
# ---------------------------------------------------------------------------------------------
DEFAULTS = {
    "data.shuffle": False,
    "train.micro_batch": 1, "train.seq_len": 64, "train.grad_accum": 1, "train.steps": 100,
    "train.max_bad_steps": 3,
    "optimizer.lr": 3e-4, "optimizer.min_lr": 0.0, "optimizer.beta1": 0.9, "optimizer.beta2": 0.95,
    "optimizer.eps": 1e-8, "optimizer.weight_decay": 0.1, "optimizer.clip_grad": 1.0,
    "optimizer.schedule": "cosine", "optimizer.warmup_steps": 0, "optimizer.decay_fraction": 0.1,
    "loss.mtp_depth": -1, "loss.mtp_lambda": 0.3, "loss.seq_aux_alpha": 0.0, "loss.expert_aux_alpha": 0.0,
    "loss.bias_update_gamma": 0.0,
}
INT_KEYS = {"train.micro_batch", "train.seq_len", "train.grad_accum", "train.steps", "train.max_bad_steps",
            "optimizer.warmup_steps", "loss.mtp_depth"}
STR_KEYS = {"optimizer.schedule", "model.init_from", "data.tokens"}


def parse_value(key, text):
    if key in INT_KEYS:
        return int(text)
    if key in STR_KEYS:
        return text
    if key == "data.shuffle":
        return text.lower() in ("1", "true", "yes")
    return float(text)


def full_config(overrides):
    cfg = dict(DEFAULTS)
    for k, v in overrides.items():
        if k not in cfg and k not in STR_KEYS:
            raise KeyError(f"unknown key {k}")
        cfg[k] = v
    return cfg


def lr_at(cfg, s):
    """Learning rate of 1-based optimizer step s (docs/TRAINING.md, Optimizer)."""
    lr, min_lr, W, N = cfg["optimizer.lr"], cfg["optimizer.min_lr"], cfg["optimizer.warmup_steps"], cfg["train.steps"]
    if W > 0 and s <= W:
        return lr * s / W
    sched = cfg["optimizer.schedule"]
    if sched == "constant":
        return lr
    if sched == "cosine":
        p = (s - W) / max(1, N - W)
        return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * p)) / 2
    if sched == "wsd":
        # round() of the doc read as std::round (halves away from zero), not Python's half-to-even
        Dd = max(1, math.floor(cfg["optimizer.decay_fraction"] * N + 0.5))
        if s <= N - Dd:
            return lr
        return min_lr + (lr - min_lr) * (N - s) / Dd
    raise ValueError(f"unknown schedule {sched}")


def read_tokens(path):
    return np.fromfile(path, dtype="<i4").astype(np.int64)


def step_windows(cfg, s0, n_win):
    """Window indices [A][B] of 0-based optimizer step s0 (data.shuffle = false)."""
    A, B = cfg["train.grad_accum"], cfg["train.micro_batch"]
    return [[((s0 * A + a) * B + i) % n_win for i in range(B)] for a in range(A)]


def window_batch(tokens, S, idx):
    return torch.tensor(np.stack([tokens[j * S: j * S + S + 1] for j in idx]), dtype=torch.long)


def checkpoint_tensors(model_dir):
    out = {}
    for f in sorted(glob.glob(os.path.join(model_dir, "*.safetensors"))):
        with safe_open(f, "pt") as sf:
            for k in sf.keys():
                out[k] = sf.get_tensor(k)
    return out


# ---------------------------------------------------------------------------------------------
# The reference trainer
# ---------------------------------------------------------------------------------------------
class Reference:
    def __init__(self, model_dir, cfg, dtype=torch.float32, classes=None):
        if cfg.get("data.shuffle"):
            raise NotImplementedError("the reference implements data.shuffle = false only")
        self.cfg = cfg
        self.dtype = dtype
        hf = AutoConfig.from_pretrained(model_dir)
        self.family = "v2" if hf.model_type == "deepseek_v2" else "v3"
        cls = DeepseekV2ForCausalLM if self.family == "v2" else DeepseekV3ForCausalLM
        if classes is not None:  # the float64 check's copies of the same modeling code
            cls = classes[self.family]
        self.model = cls.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager",
                                         experts_implementation="eager")
        if "quantization_config" in json.load(open(os.path.join(model_dir, "config.json"))):
            raise NotImplementedError("quantized checkpoints are not supported by the reference")
        if getattr(hf, "attention_dropout", 0.0):
            raise NotImplementedError("attention_dropout > 0: docs/TRAINING.md defines no dropout")
        self.model.to(dtype).train()  # routing does not depend on the mode; dropout is 0 (checked above)
        c = self.model.config
        self.L, self.V, self.E = c.num_hidden_layers, c.vocab_size, c.n_routed_experts
        self.K = c.num_experts_per_tok
        sd = checkpoint_tensors(model_dir)
        stored = 0
        while f"model.layers.{self.L + stored}.eh_proj.weight" in sd:
            stored += 1
        depth = cfg["loss.mtp_depth"]
        if depth < 0:
            depth = getattr(c, "num_nextn_predict_layers", 0) or 0
        if depth > stored:
            raise ValueError(f"loss.mtp_depth {depth} but the checkpoint stores {stored} MTP module(s)")
        self.D = depth
        self.mtp = None
        if self.D > 0:
            self.mtp = MtpModel(self.model, self.D)
            renamed = {}
            for k in range(self.D):
                prefix = f"model.layers.{self.L + k}."
                for name, v in sd.items():
                    if not name.startswith(prefix):
                        continue
                    rest = name[len(prefix):]
                    if rest.startswith(("embed_tokens", "shared_head.head")):
                        continue  # copies of the shared embedding / head
                    if rest.startswith(("enorm", "hnorm", "eh_proj")):
                        renamed[f"layers.{k}.{rest}"] = v
                    elif rest.startswith("shared_head.norm"):
                        renamed[f"layers.{k}.post_norm." + rest.split(".", 2)[2]] = v
                    else:
                        renamed[f"layers.{k}.mtp_block.{rest}"] = v
            missing, unexpected = self.mtp.load_state_dict(mf.fuse_experts(renamed), strict=False)
            missing = [m for m in missing if not m.startswith(("embed_tokens", "shared_head"))]
            assert not missing and not unexpected, (missing, unexpected)
            self.mtp.to(dtype).train()
            assert self.mtp.embed_tokens is self.model.model.embed_tokens and self.mtp.shared_head is self.model.lm_head
        # Main-model MoE layers and a hook on each router (TopkRouter.forward returns
        # router_logits, topk_weights, topk_indices: the choice the model actually made).
        self.moe_layers = [l for l in range(self.L) if hasattr(self.model.model.layers[l].mlp, "gate")]
        self.captured = {}

        def hook(l):
            def f(module, inputs, output):
                self.captured[l] = (inputs[0], output[0], output[2])
            return f
        for l in self.moe_layers:
            self.model.model.layers[l].mlp.gate.register_forward_hook(hook(l))
        # Parameters: the main model's (tied embedding once), then the trained MTP modules'.
        self.named = []  # (internal name, checkpoint base name, parameter)
        seen = set()
        for n, p in self.model.named_parameters():
            seen.add(id(p))
            self.named.append((n, n, p))
        if self.mtp is not None:
            for n, p in self.mtp.named_parameters():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                m = re.match(r"layers\.(\d+)\.(.*)$", n)
                k, rest = int(m.group(1)), m.group(2)
                if rest.startswith("mtp_block."):
                    rest = rest[len("mtp_block."):]
                elif rest.startswith("post_norm."):
                    rest = "shared_head.norm." + rest[len("post_norm."):]
                self.named.append(("mtp." + n, f"model.layers.{self.L + k}.{rest}", p))
        self.params = [p for _, _, p in self.named]
        decay = [p for p in self.params if p.dim() >= 2]
        no_decay = [p for p in self.params if p.dim() < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg["optimizer.weight_decay"]},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg["optimizer.lr"], betas=(cfg["optimizer.beta1"], cfg["optimizer.beta2"]),
            eps=cfg["optimizer.eps"], foreach=False, fused=False)
        self.steps_done = 0
        self.bad = 0

    # -- losses of one micro-batch x [B, S + 1] ------------------------------------------------
    def micro(self, x):
        S = x.shape[1] - 1
        B = x.shape[0]
        self.captured.clear()
        inp, tgt = x[:, :S], x[:, 1:]
        h0 = self.model.model(input_ids=inp, use_cache=False).last_hidden_state  # after the final norm
        logits = self.model.lm_head(h0)
        main = F.cross_entropy(logits.reshape(-1, self.V), tgt.reshape(-1))
        # Balance losses and loads from the main model's routers only (the hooks sit there).
        aux = torch.zeros((), dtype=self.dtype)
        loads = {}
        a_seq, a_exp = self.cfg["loss.seq_aux_alpha"], self.cfg["loss.expert_aux_alpha"]
        for l in self.moe_layers:
            _, rl, idx = self.captured[l]
            rl = rl.view(B, S, self.E).to(self.dtype)  # the router's float32 logits
            counts = torch.zeros(B, self.E, dtype=torch.float64).scatter_add_(
                1, idx.reshape(B, -1), torch.ones(B, S * self.K, dtype=torch.float64))
            loads[l] = counts.sum(0)
            f = (counts * (self.E / (self.K * S))).to(rl.dtype)  # a count: no gradient
            if a_seq:
                s = rl.sigmoid()
                s = s / s.sum(-1, keepdim=True)
                aux = aux + a_seq * (f * s.mean(1)).sum(1).mean()
            if a_exp:
                s = rl.softmax(-1)
                aux = aux + a_exp * (f * s.mean(1)).sum(1).mean()
        # MTP: module k, rows i = 0 .. S-k-1: token w[i+k], h_{k-1}[i], position i+k, predicts w[i+k+1].
        mtp_terms = []
        prev = h0
        for k in range(1, self.D + 1):
            n = S - k
            if n <= 0:
                raise ValueError(f"seq_len {S} too short for MTP depth {self.D}")
            emb = self.model.model.embed_tokens(x[:, k:k + n])
            pos = torch.arange(k, k + n)[None].expand(B, n)
            pe = self.model.model.rotary_emb(emb, position_ids=pos)
            mask = torch.full((n, n), float("-inf"), dtype=emb.dtype).triu(1)[None, None]
            hk = self.mtp.layers[k - 1](emb, prev[:, :n], position_embeddings=pe, attention_mask=mask,
                                        position_ids=pos, past_key_values=None)
            lk = F.cross_entropy(self.model.lm_head(hk).reshape(-1, self.V), x[:, k + 1:k + 1 + n].reshape(-1))
            mtp_terms.append(lk)
            prev = hk
        mtp = torch.stack(mtp_terms).mean() if mtp_terms else torch.zeros((), dtype=self.dtype)
        total = main + (self.cfg["loss.mtp_lambda"] * mtp if mtp_terms else 0.0) + aux
        return total, main, mtp, aux, loads

    def forward_backward(self, batches, aux_only=False):
        """Gradient of the step's mean total loss (or of its mean aux_loss) into p.grad."""
        for p in self.params:
            p.grad = None
        A = len(batches)
        m = {"loss": 0.0, "mtp_loss": 0.0, "aux_loss": 0.0, "total": 0.0}
        loads = {}
        for x in batches:
            total, main, mtp, aux, ld = self.micro(x)
            ((aux if aux_only else total) / A).backward()
            m["loss"] += main.item() / A
            m["mtp_loss"] += mtp.item() / A
            m["aux_loss"] += aux.item() / A
            m["total"] += total.item() / A
            for l, v in ld.items():
                loads[l] = loads.get(l, 0) + v
        # A parameter the step did not reach still takes a (zero-gradient) AdamW update, as transformers'
        # fused expert tensors always do; nothing in these models is unreached in practice.
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return m, loads

    def grads_by_checkpoint_name(self, only=None):
        out = {}
        for _, name, p in self.named:
            if only is not None and not only(name):
                continue
            out[name] = p.grad.detach().float().clone()
        return mf.unfuse_experts(out)

    def step(self, tokens, on_grads=None):
        cfg = self.cfg
        S = cfg["train.seq_len"]
        n_win = (len(tokens) - 1) // S
        s0 = self.steps_done
        batches = [window_batch(tokens, S, idx) for idx in step_windows(cfg, s0, n_win)]
        m, loads = self.forward_backward(batches)
        self.last_loads = loads
        if on_grads is not None:
            on_grads(self, batches)
        clip = cfg["optimizer.clip_grad"]
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip > 0 else float("inf"), foreach=False)
        lr = lr_at(cfg, s0 + 1)
        self.steps_done += 1
        rec = {"step": s0 + 1, "loss": m["loss"], "mtp_loss": m["mtp_loss"], "aux_loss": m["aux_loss"],
               "grad_norm": float(norm), "lr": lr}
        if not (math.isfinite(m["total"]) and math.isfinite(float(norm))):
            self.bad += 1
            rec["skipped"] = True
            print(f"warning: step {s0 + 1} skipped (loss {m['total']}, grad norm {float(norm)})")
            if self.bad >= cfg["train.max_bad_steps"]:
                raise RuntimeError(f"{self.bad} consecutive non-finite steps")
            return rec
        self.bad = 0
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.step()
        gamma = cfg["loss.bias_update_gamma"]
        if gamma > 0:
            with torch.no_grad():
                for l in self.moe_layers:
                    gate = self.model.model.layers[l].mlp.gate
                    if not hasattr(gate, "e_score_correction_bias"):
                        continue
                    load = loads[l]
                    mean = load.sum() / self.E
                    gate.e_score_correction_bias.add_(
                        torch.sign(mean - load).to(gate.e_score_correction_bias.dtype) * gamma)
        return rec

    def biases(self):
        return {f"model.layers.{l}.mlp.gate.e_score_correction_bias":
                self.model.model.layers[l].mlp.gate.e_score_correction_bias.detach().float().clone()
                for l in self.moe_layers if hasattr(self.model.model.layers[l].mlp.gate, "e_score_correction_bias")}


def run_reference(model_dir, tokens, cfg, grads_hook=None, dtype=torch.float32, classes=None):
    ref = Reference(model_dir, cfg, dtype=dtype, classes=classes)
    records = []
    ref.unrouted = 0  # (step, main-model MoE layer, expert) triples with no assignment: zero-gradient updates
    for s in range(cfg["train.steps"]):
        records.append(ref.step(tokens, on_grads=grads_hook if s == 0 else None))
        ref.unrouted += sum(int((v == 0).sum()) for v in ref.last_loads.values())
    return ref, records


def add_mtp_module(model_dir, seed):
    """Appends one random MTP module (make_fixtures.mtp_state's recipe) at the next free index
    model.layers.{L + k} of a float32 checkpoint directory, in mtp_extra_{k}.safetensors, and raises
    num_nextn_predict_layers to match. Used for MTP depth > 1 (checks, parity runs)."""
    sd = checkpoint_tensors(model_dir)
    cfg_path = os.path.join(model_dir, "config.json")
    raw = json.load(open(cfg_path))
    hf = AutoConfig.from_pretrained(model_dir)
    L = hf.num_hidden_layers
    k = 0
    while f"model.layers.{L + k}.eh_proj.weight" in sd:
        k += 1
    model = DeepseekV3ForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    module = mf.mtp_state(model, model.config, seed)
    renamed = {f"model.layers.{L + k}." + n[len(f"model.layers.{L}."):]: v.contiguous() for n, v in module.items()}
    fname = f"mtp_extra_{k}.safetensors"
    save_file(renamed, os.path.join(model_dir, fname), metadata={"format": "pt"})
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index_path):
        index = json.load(open(index_path))
    else:
        index = {"metadata": {}, "weight_map": {n: "model.safetensors" for n in sd}}
    for n in renamed:
        index["weight_map"][n] = fname
    json.dump(index, open(index_path, "w"), indent=2)
    raw["num_nextn_predict_layers"] = k + 1
    json.dump(raw, open(cfg_path, "w"), indent=2)
    return k + 1


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------
def structured_tokens(n, vocab, seed):
    """A noisy permutation chain over ids 2..vocab-1: next = perm[prev] with probability 0.8, else uniform.
    Learnable (the loss falls within a few dozen steps) and deterministic."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(np.arange(2, vocab))
    nxt = np.zeros(vocab, dtype=np.int64)
    nxt[2:] = perm
    t = int(rng.integers(2, vocab))
    out = np.empty(n, dtype=np.int32)
    for i in range(n):
        out[i] = t
        t = int(nxt[t]) if rng.random() < 0.8 else int(rng.integers(2, vocab))
    return out


BASE = {"optimizer.lr": 1e-3, "optimizer.min_lr": 0.0, "optimizer.beta1": 0.9, "optimizer.beta2": 0.95,
        "optimizer.eps": 1e-8, "optimizer.weight_decay": 0.1, "optimizer.clip_grad": 1.0,
        "optimizer.schedule": "constant", "optimizer.warmup_steps": 0, "optimizer.decay_fraction": 0.1,
        "loss.mtp_depth": 0, "loss.mtp_lambda": 0.0, "loss.seq_aux_alpha": 0.0, "loss.expert_aux_alpha": 0.0,
        "loss.bias_update_gamma": 0.0, "data.shuffle": False, "train.max_bad_steps": 3}

# name -> (model directory relative to the repo, overrides, number of windows in tokens.bin, notes)
CASES = {
    "v2_yarn": ("tests/fixtures/models/v2_group_limited_yarn",
                {"train.seq_len": 16, "train.micro_batch": 2, "train.grad_accum": 1, "train.steps": 30},
                37, "V2 group-limited greedy router, YaRN, q-LoRA, attention biases; windows wrap after step 18"),
    "v3_mtp": ("tests/fixtures/models/v3_mtp",
               {"train.seq_len": 16, "train.micro_batch": 2, "train.grad_accum": 2, "train.steps": 30,
                "optimizer.lr": 2e-3, "loss.mtp_depth": 1, "loss.mtp_lambda": 0.3},
               45, "MTP depth 1 (module at model.layers.2), lambda 0.3, two micro-batches per step"),
    "v3_tied": ("tests/fixtures/models/v3_halfsplit_tied_noqlora",
                {"train.seq_len": 12, "train.micro_batch": 1, "train.grad_accum": 1, "train.steps": 30,
                 "optimizer.lr": 3e-3, "optimizer.min_lr": 1e-4, "optimizer.schedule": "cosine",
                 "optimizer.warmup_steps": 3},
                25, "tied embedding / head (one gradient under model.embed_tokens.weight), half-split RoPE, "
                    "no q-LoRA, cosine with 3 warmup steps"),
    "v3_aux": ("tests/fixtures/models/v3_noaux_yarn",
               {"train.seq_len": 16, "train.micro_batch": 2, "train.grad_accum": 1, "train.steps": 10,
                "optimizer.lr": 2e-3, "loss.seq_aux_alpha": 0.01, "loss.bias_update_gamma": 0.001},
               30, "V3 sequence-wise balance loss 0.01 and aux-free bias update 0.001 on both MoE layers"),
    "v2_aux": ("tests/fixtures/models/v2_greedy_noqlora",
               {"train.seq_len": 16, "train.micro_batch": 2, "train.grad_accum": 1, "train.steps": 10,
                "optimizer.lr": 2e-3, "loss.expert_aux_alpha": 0.01},
               30, "V2 expert-level balance loss 0.01, greedy router, two shared experts"),
    "clip_small": ("tests/fixtures/models/v3_noaux_yarn",
                   {"train.seq_len": 16, "train.micro_batch": 2, "train.grad_accum": 1, "train.steps": 10,
                    "optimizer.lr": 3e-3, "optimizer.min_lr": 3e-4, "optimizer.clip_grad": 0.05,
                    "optimizer.schedule": "wsd", "optimizer.decay_fraction": 0.3},
                   30, "clip 0.05 (active every step), WSD: constant for steps 1-7, linear decay over 8-10"),
}


def build_case(name, out_root, seed):
    model_rel, over, n_win, notes = CASES[name]
    cfg = full_config({**BASE, **over})
    model_dir = os.path.join(REPO, model_rel)
    out = os.path.join(out_root, name)
    os.makedirs(out, exist_ok=True)
    S = cfg["train.seq_len"]
    vocab = AutoConfig.from_pretrained(model_dir).vocab_size
    n_tokens = n_win * S + 1 + S // 2  # a ragged tail: n_win = (N - 1) // S
    tokens = structured_tokens(n_tokens, vocab, seed)
    tokens.astype("<i4").tofile(os.path.join(out, "tokens.bin"))
    toks = read_tokens(os.path.join(out, "tokens.bin"))
    saved = {}

    def grads_hook(ref, batches):
        save_file({k: v.contiguous() for k, v in ref.grads_by_checkpoint_name().items()},
                  os.path.join(out, "grads_step1.safetensors"), metadata={"format": "pt"})
        if cfg["loss.seq_aux_alpha"] or cfg["loss.expert_aux_alpha"]:
            keep = {n: p.grad.clone() for _, n, p in ref.named}
            ref.forward_backward(batches, aux_only=True)
            aux = ref.grads_by_checkpoint_name(only=lambda n: re.match(r"model\.layers\.\d+\.mlp\.gate\.weight$", n)
                                               and int(n.split(".")[2]) < ref.L)
            save_file({k: v.contiguous() for k, v in aux.items()}, os.path.join(out, "grads_step1_aux.safetensors"),
                      metadata={"format": "pt"})
            saved["aux_router_grad_max"] = max(float(v.abs().max()) for v in aux.values())
            for _, n, p in ref.named:  # restore the total-loss gradient for the update
                p.grad = keep[n]

    ref, records = run_reference(model_dir, toks, cfg, grads_hook)
    # Sensitivity: the same run in float64 (float64_model_classes). A float32 trainer cannot be expected
    # to agree with this fixture more closely than the fixture agrees with its own float64 run.
    _, rec64 = run_reference(model_dir, toks, cfg, dtype=torch.float64, classes=float64_model_classes())
    drift = {k: max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-12) for a, b in zip(records, rec64))
             for k in ("loss", "mtp_loss", "aux_loss", "grad_norm") if any(r[k] for r in rec64)}
    saved["float32_vs_float64_max_rel_diff"] = drift
    json.dump(records, open(os.path.join(out, "losses.json"), "w"), indent=1)
    files = ["tokens.bin", "losses.json", "grads_step1.safetensors"]
    if os.path.exists(os.path.join(out, "grads_step1_aux.safetensors")):
        files.append("grads_step1_aux.safetensors")
    bias_path = os.path.join(out, "bias_final.safetensors")
    if cfg["loss.bias_update_gamma"] > 0:
        save_file(ref.biases(), bias_path, metadata={"format": "pt"})
        files.append("bias_final.safetensors")
    elif os.path.exists(bias_path):
        os.remove(bias_path)
    config = {"model.init_from": model_rel, "data.tokens": os.path.relpath(os.path.join(out, "tokens.bin"), REPO)}
    config.update({k: v for k, v in cfg.items() if k not in config})
    meta = {
        "case": name, "model": model_rel, "tokens": "tokens.bin", "n_tokens": int(len(toks)),
        "n_windows": (len(toks) - 1) // S, "family": ref.family, "mtp_modules_trained": ref.D,
        "moe_layers": ref.moe_layers, "config": config, "files": files, "notes": notes,
        "conventions": [
            "paths in config are relative to the repository root; 'tokens' is relative to this directory",
            "losses.json: loss / mtp_loss / aux_loss are the step's means over its micro-batches, at the weights "
            "before the step's update; grad_norm is before clipping; lr is the rate the update used",
            "grads_step1: gradient of loss + mtp_lambda * mtp_loss + aux_loss at the initial weights, mean over "
            "step 1's micro-batches, before clipping; the MTP modules' copies of the embedding and head are not "
            "parameters (the main model's are shared)",
            "bias_final: e_score_correction_bias of main-model MoE layers after the last step (float32)",
            "every parameter takes the AdamW update every step; an expert no token was routed to has a zero "
            "gradient (moments decay, weight decay applies), as transformers' fused expert tensors behave; "
            "unrouted_expert_steps counts such (step, layer, expert) triples in this run",
        ],
        "reference": {"torch": torch.__version__, "transformers": transformers.__version__,
                      "script": "tests/ref/make_train_fixtures.py", "dtype": "float32",
                      "attn_implementation": "eager", "experts_implementation": "eager"},
        "suggested_tolerance": "per-step loss / mtp_loss / aux_loss relative 1e-3; grads max|diff| <= 1e-3 * "
                               "max|grad| per tensor",
    }
    meta["unrouted_expert_steps"] = ref.unrouted
    meta.update(saved)
    json.dump(meta, open(os.path.join(out, "train.json"), "w"), indent=1)
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    first, last = records[0], records[-1]
    print(f"{name}: {len(records)} steps, loss {first['loss']:.4f} -> {last['loss']:.4f}"
          + (f", mtp {first['mtp_loss']:.4f} -> {last['mtp_loss']:.4f}" if ref.D else "")
          + (f", aux {first['aux_loss']:.5f} -> {last['aux_loss']:.5f}" if first["aux_loss"] else "")
          + f", grad_norm {first['grad_norm']:.3f} -> {last['grad_norm']:.3f}, {size / 1024:.0f} KiB, "
          + f"{ref.unrouted} unrouted (step, layer, expert); "
          + "fp32 vs fp64 max rel.diff " + ", ".join(f"{k} {v:.1e}" for k, v in drift.items()))
    return records


# ---------------------------------------------------------------------------------------------
# Self-checks
# ---------------------------------------------------------------------------------------------
def np_route(x, W, bias, c, family):
    """Independent numpy routing of the gate input x [T, D] (float32 as the router computes)."""
    logits = (x.astype(np.float32) @ W.astype(np.float32).T).astype(np.float64)
    E, K = W.shape[0], c.num_experts_per_tok
    if family == "v3":
        s = 1 / (1 + np.exp(-logits))
        choice = s + bias
        G = c.n_group
        gs = np.sort(choice.reshape(len(x), G, E // G), -1)[..., -2:].sum(-1)
        out = []
        for t in range(len(x)):
            groups = np.argsort(-gs[t])[: c.topk_group]
            allowed = np.concatenate([np.arange(g * (E // G), (g + 1) * (E // G)) for g in groups])
            cand = sorted(allowed, key=lambda e: -choice[t, e])
            out.append(set(int(e) for e in cand[:K]))
        return logits, out
    s = np.exp(logits - logits.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    if c.topk_method == "greedy":
        return logits, [set(int(e) for e in np.argsort(-s[t])[:K]) for t in range(len(x))]
    G = c.n_group
    gs = s.reshape(len(x), G, E // G).max(-1)
    out = []
    for t in range(len(x)):
        groups = np.argsort(-gs[t])[: c.topk_group]
        m = np.zeros(E)
        for g in groups:
            m[g * (E // G):(g + 1) * (E // G)] = 1
        out.append(set(int(e) for e in np.argsort(-(s[t] * m))[:K]))
    return logits, out


def check_aux_independent(model_rel, over, seed):
    """Balance losses recomputed with numpy loops from the captured gate inputs; routing re-derived."""
    cfg = full_config({**BASE, **over})
    ref = Reference(os.path.join(REPO, model_rel), cfg, dtype=torch.float32)
    c = ref.model.config
    S, B = cfg["train.seq_len"], cfg["train.micro_batch"]
    toks = structured_tokens(S * B * 2 + 1, c.vocab_size, seed).astype(np.int64)
    x = window_batch(toks, S, list(range(B)))
    with torch.no_grad():
        _, _, _, aux, _ = ref.micro(x)
    total, mismatched = 0.0, 0
    for l in ref.moe_layers:
        gx, rl, idx = ref.captured[l]
        gate = ref.model.model.layers[l].mlp.gate
        bias = gate.e_score_correction_bias.numpy().astype(np.float64) if hasattr(gate, "e_score_correction_bias") else 0
        logits, chosen = np_route(gx.reshape(-1, c.hidden_size).numpy(), gate.weight.detach().numpy(), bias, c, ref.family)
        hooked = [set(int(e) for e in row) for row in idx.numpy()]
        mismatched += sum(a != b for a, b in zip(chosen, hooked))
        E, K = ref.E, ref.K
        for b in range(B):
            f = np.zeros(E)
            P = np.zeros(E)
            for t in range(S):
                row = logits[b * S + t]
                for e in hooked[b * S + t]:
                    f[e] += E / (K * S)
                if cfg["loss.seq_aux_alpha"]:
                    sg = 1 / (1 + np.exp(-row))
                    P += sg / sg.sum() / S
            if cfg["loss.seq_aux_alpha"]:
                total += cfg["loss.seq_aux_alpha"] * float((f * P).sum()) / B
            if cfg["loss.expert_aux_alpha"]:
                P = np.zeros(E)
                for t in range(S):
                    row = logits[b * S + t]
                    sm = np.exp(row - row.max())
                    P += sm / sm.sum() / S
                total += cfg["loss.expert_aux_alpha"] * float((f * P).sum()) / B
    rel = abs(total - float(aux)) / abs(total)
    return rel, mismatched


def routing_signature(ref):
    return {l: ref.captured[l][2].sort(-1).values.clone() for l in ref.moe_layers}


def float64_model_classes():
    """transformers' DeepSeek modeling files cast activations to float32 in a few places (RMSNorm, the
    routers, the eager attention softmax, V2's complex RoPE). For the float64 finite-difference check,
    the same source is executed once more with those casts made float64 ("torch.float32" -> "torch.float64",
    V2's "xq.float()" / "xk.float()" -> ".double()"); the RoPE tables stay float32 (constants, so they add no
    finite-difference noise); nothing else changes."""
    import importlib
    import inspect
    import types
    out = {}
    for family, modname, clsname in (("v2", "transformers.models.deepseek_v2.modeling_deepseek_v2", "DeepseekV2ForCausalLM"),
                                     ("v3", "transformers.models.deepseek_v3.modeling_deepseek_v3", "DeepseekV3ForCausalLM")):
        orig = importlib.import_module(modname)
        src = inspect.getsource(orig)
        patched = src.replace("torch.float32", "torch.float64")
        patched = patched.replace("xq.float()", "xq.double()").replace("xk.float()", "xk.double()")
        assert patched != src
        mod = types.ModuleType(modname + "_float64")
        mod.__package__, mod.__file__ = orig.__package__, orig.__file__
        sys.modules[mod.__name__] = mod
        exec(compile(patched, orig.__file__ + " (float64)", "exec"), mod.__dict__)
        out[family] = getattr(mod, clsname)
    return out


def check_fd(model_rel, over, seed, n_per=3, eps=1e-4, aux_only=False):
    """Central differences of the step's total loss (or aux_loss alone) on a float64 copy of the model
    (routers included) against autograd. Entries whose perturbation flips a routing decision are skipped."""
    cfg = full_config({**BASE, **over})
    ref = Reference(os.path.join(REPO, model_rel), cfg, dtype=torch.float64, classes=float64_model_classes())
    c = ref.model.config
    S = cfg["train.seq_len"]
    A, B = cfg["train.grad_accum"], cfg["train.micro_batch"]
    toks = structured_tokens(S * A * B + 1, c.vocab_size, seed).astype(np.int64)
    n_win = (len(toks) - 1) // S
    batches = [window_batch(toks, S, idx) for idx in step_windows(cfg, 0, n_win)]
    ref.forward_backward(batches, aux_only=aux_only)
    grads = {n: p.grad.clone() for n, _, p in ref.named}
    key = "aux_loss" if aux_only else "total"

    def evaluate():
        sigs = []
        with torch.no_grad():
            val = 0.0
            for x in batches:
                total, main, mtp, aux, _ = ref.micro(x)
                val += float(aux if aux_only else total) / len(batches)
                sigs.append(routing_signature(ref))
        return val, sigs

    base_val, base_sig = evaluate()
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for n, _, p in ref.named:
        interesting = (n.endswith("mlp.gate.weight") or "eh_proj" in n or "experts" in n or "embed" in n
                       or n.endswith("norm.weight") or "kv_b_proj" in n or "lm_head" in n)
        if aux_only and not n.endswith("mlp.gate.weight"):
            interesting = "kv_b_proj" in n or n == "model.embed_tokens.weight"
        if not interesting:
            continue
        for _ in range(n_per):
            flat = int(torch.randint(p.numel(), (1,), generator=gen))
            picks.append((n, p, flat))
    worst, done, skipped = 0.0, 0, 0
    rows = []
    for n, p, flat in picks:
        g = float(grads[n].reshape(-1)[flat])
        with torch.no_grad():
            orig = p.reshape(-1)[flat].item()
            p.view(-1)[flat] = orig + eps
            vp, sp = evaluate()
            p.view(-1)[flat] = orig - eps
            vm, sm = evaluate()
            p.view(-1)[flat] = orig
        same = all(all(torch.equal(a[l], b[l]) for l in a) for a, b in zip(sp + sm, base_sig + base_sig))
        if not same:
            skipped += 1
            continue
        fd = (vp - vm) / (2 * eps)
        scale = max(abs(g), abs(fd), 1e-3 * max(float(v.abs().max()) for v in grads.values()))
        err = abs(fd - g) / scale
        worst = max(worst, err)
        done += 1
        rows.append((n, flat, g, fd, err))
    return worst, done, skipped, rows, key, base_val


def check_mtp_fixture():
    """Our MTP path at the initial weights against tests/fixtures/models/v3_mtp/mtp_logits.npy (made by
    make_fixtures.mtp_reference), and the MTP loss against the cross-entropy of those logits."""
    d = os.path.join(REPO, "tests/fixtures/models/v3_mtp")
    ids = json.load(open(os.path.join(d, "ref.json")))["ids"]
    want = np.load(os.path.join(d, "mtp_logits.npy"))
    main_want = np.load(os.path.join(d, "logits.npy"))
    cfg = full_config({**BASE, "loss.mtp_depth": 1, "loss.mtp_lambda": 0.3})
    ref = Reference(d, cfg)
    x = torch.tensor([ids])  # a window of S + 1 = len(ids) tokens
    S = len(ids) - 1
    captured = {}
    h = ref.mtp.layers[0].register_forward_hook(lambda m, i, o: captured.__setitem__("h", o))
    with torch.no_grad():
        _, main, mtp, _, _ = ref.micro(x)
        got = ref.model.lm_head(captured["h"])[0].numpy()
        full = ref.model(torch.tensor([ids])).logits[0].numpy()
    h.remove()
    mtp_err = float(np.abs(got - want[: S - 1]).max() / np.abs(want).max())
    main_err = float(np.abs(full - main_want).max() / np.abs(main_want).max())
    ce_want = float(F.cross_entropy(torch.tensor(want[: S - 1]), torch.tensor(ids[2:])))
    ce_main = float(F.cross_entropy(torch.tensor(main_want[:S]), torch.tensor(ids[1:])))
    return mtp_err, main_err, abs(float(mtp) - ce_want) / ce_want, abs(float(main) - ce_main) / ce_main


def check_mtp_depth2(seed):
    """Depth 2 against transformers' own chained MtpModel.forward (its drafting path, which feeds module 2
    the rolled ids and module 1's hidden states): with the sequence chosen so that the token module 1
    drafts is the true next token, the last row of each module must match the teacher-forced rows."""
    import shutil
    import tempfile
    tmp = tempfile.mkdtemp()
    try:
        d = os.path.join(tmp, "m")
        shutil.copytree(os.path.join(REPO, "tests/fixtures/models/v3_mtp"), d)
        add_mtp_module(d, seed)
        cfg = full_config({**BASE, "loss.mtp_depth": 2, "loss.mtp_lambda": 0.3})
        ref = Reference(d, cfg)
        ids = [int(v) for v in structured_tokens(12, ref.V, seed)]
        m = len(ids) - 3  # drafting: module 1 reads ids[1..m], module 2 ids[2..m] then the drafted token
        with torch.no_grad():
            h0 = ref.model.model(input_ids=torch.tensor([ids[:m]]), use_cache=False).last_hidden_state
            drafted, logits, _ = ref.mtp(input_ids=torch.tensor([ids[1:m + 1]]), last_hidden_states=h0,
                                         attention_mask=torch.ones(1, m, dtype=torch.long),
                                         position_ids=torch.arange(1, m + 1)[None], mtp_cache=None)
            ids[m + 1] = int(drafted[0, 0])  # make the draft the truth (tokens up to m are unchanged)
            x = torch.tensor([ids])  # S = m + 2: module 2's teacher-forced row m - 1 reads ids[m + 1]
            got = {}
            hooks = [ref.mtp.layers[k].register_forward_hook(lambda mod, i, o, k=k: got.__setitem__(k, o))
                     for k in range(2)]
            _, _, mtp, _, _ = ref.micro(x)
            for hk in hooks:
                hk.remove()
            tf1 = ref.model.lm_head(got[0])[0]  # module 1 rows 0..S-2 (predict ids[i + 2])
            tf2 = ref.model.lm_head(got[1])[0]  # module 2 rows 0..S-3 (predict ids[i + 3])
            ce = (F.cross_entropy(tf1, torch.tensor(ids[2:])) + F.cross_entropy(tf2, torch.tensor(ids[3:]))) / 2
        e1 = float((tf1[m - 1] - logits[0, 0]).abs().max() / logits[0, 0].abs().max())
        e2 = float((tf2[m - 1] - logits[0, 1]).abs().max() / logits[0, 1].abs().max())
        return e1, e2, abs(float(mtp) - float(ce)) / float(ce)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_accum_equivalence(model_rel, over, seed):
    """(B = 2, A = 2) against (B = 4, A = 1) over the same windows: step-1 metrics and gradients agree."""
    out = []
    for b, a in ((2, 2), (4, 1)):
        cfg = full_config({**BASE, **over, "train.micro_batch": b, "train.grad_accum": a})
        ref = Reference(os.path.join(REPO, model_rel), cfg)
        S = cfg["train.seq_len"]
        toks = structured_tokens(S * 4 + 1, ref.V, seed).astype(np.int64)
        batches = [window_batch(toks, S, idx) for idx in step_windows(cfg, 0, 4)]
        m, _ = ref.forward_backward(batches)
        out.append((m, {n: p.grad.clone() for n, _, p in ref.named}))
    (m1, g1), (m2, g2) = out
    dm = max(abs(m1[k] - m2[k]) / max(abs(m1[k]), 1e-12) for k in ("loss", "mtp_loss", "aux_loss") if m1[k])
    dg = max(float((g1[n] - g2[n]).abs().max() / g2[n].abs().max().clamp(min=1e-12)) for n in g1)
    return dm, dg


def check_adamw_and_clip(model_rel, over, seed):
    """Two reference steps against a hand-written AdamW (docs/TRAINING.md / torch formula) with clipping."""
    cfg = full_config({**BASE, **over, "train.steps": 2})
    ref = Reference(os.path.join(REPO, model_rel), cfg)
    S = cfg["train.seq_len"]
    toks = structured_tokens(S * 8 + 1, ref.V, seed).astype(np.int64)
    b1, b2, eps, wd, clip = (cfg["optimizer.beta1"], cfg["optimizer.beta2"], cfg["optimizer.eps"],
                             cfg["optimizer.weight_decay"], cfg["optimizer.clip_grad"])
    P = {n: p.detach().double().clone() for n, _, p in ref.named}
    Mm = {n: torch.zeros_like(v) for n, v in P.items()}
    Vv = {n: torch.zeros_like(v) for n, v in P.items()}
    worst = 0.0
    coefs = []
    for s in range(1, 3):
        grads = {}

        def grab(r, batches):  # the unclipped gradient of this step
            grads.update({n: p.grad.detach().double().clone() for n, _, p in r.named})
        rec = ref.step(toks, on_grads=grab)
        norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads.values()))
        coef = min(1.0, clip / (norm + 1e-6))
        coefs.append(coef)
        assert abs(rec["grad_norm"] - norm) <= 1e-5 * norm, (rec["grad_norm"], norm)
        lr = lr_at(cfg, s)
        for n, _, p in ref.named:
            g = grads[n] * coef
            Mm[n] = b1 * Mm[n] + (1 - b1) * g
            Vv[n] = b2 * Vv[n] + (1 - b2) * g * g
            decay = wd if P[n].dim() >= 2 else 0.0
            P[n] = P[n] * (1 - lr * decay)
            denom = (Vv[n].sqrt() / math.sqrt(1 - b2 ** s)) + eps
            P[n] = P[n] - (lr / (1 - b1 ** s)) * Mm[n] / denom
            worst = max(worst, float((p.detach().double() - P[n]).abs().max()) / lr)
    return worst, coefs


def run_checks():
    print("== reference self-checks ==")
    results = []

    def report(name, ok, text):
        results.append((name, ok))
        print(f"[{'ok' if ok else 'FAIL'}] {name}: {text}")

    mtp_err, main_err, mtp_ce, main_ce = check_mtp_fixture()
    report("mtp logits vs fixture", mtp_err < 1e-5 and main_err < 1e-5,
           f"MTP logits rel.err {mtp_err:.1e}, main logits rel.err {main_err:.1e} against tests/fixtures/models/v3_mtp")
    report("mtp loss = CE(MtpLayer logits)", mtp_ce < 1e-5 and main_ce < 1e-5,
           f"rel.err {mtp_ce:.1e} (main CE {main_ce:.1e})")
    e1, e2, ce = check_mtp_depth2(seed=9)
    report("MTP depth 2 vs MtpModel.forward (chained drafting)", e1 < 1e-5 and e2 < 1e-5 and ce < 1e-6,
           f"module 1 last-row rel.err {e1:.1e}, module 2 last-row rel.err {e2:.1e}; "
           f"mtp_loss vs mean CE of the two modules' logits {ce:.1e}")
    for model_rel, over in (("tests/fixtures/models/v3_noaux_yarn", {"train.seq_len": 16, "train.micro_batch": 3,
                                                                     "loss.seq_aux_alpha": 0.01}),
                            ("tests/fixtures/models/v3_halfsplit_tied_noqlora", {"train.seq_len": 12, "train.micro_batch": 2,
                                                                                 "loss.seq_aux_alpha": 0.1}),
                            ("tests/fixtures/models/v2_group_limited_yarn", {"train.seq_len": 16, "train.micro_batch": 3,
                                                                             "loss.expert_aux_alpha": 0.01}),
                            ("tests/fixtures/models/v2_greedy_noqlora", {"train.seq_len": 16, "train.micro_batch": 3,
                                                                         "loss.expert_aux_alpha": 0.01})):
        rel, mism = check_aux_independent(model_rel, over, seed=7)
        report(f"aux loss (numpy loops) {os.path.basename(model_rel)}", rel < 1e-5 and mism == 0,
               f"rel.err {rel:.1e}; tokens whose hooked top-K differs from numpy re-routing: {mism}")
    fd_cases = [
        ("v3 total (seq aux 0.05, MTP depth 1, B=2 A=2)", "tests/fixtures/models/v3_mtp",
         {"train.seq_len": 10, "train.micro_batch": 2, "train.grad_accum": 2, "loss.mtp_depth": 1,
          "loss.mtp_lambda": 0.3, "loss.seq_aux_alpha": 0.05}, False),
        ("v3 aux only (seq aux 0.01)", "tests/fixtures/models/v3_noaux_yarn",
         {"train.seq_len": 10, "train.micro_batch": 2, "loss.seq_aux_alpha": 0.01}, True),
        ("v3 tied aux only (seq aux 0.01)", "tests/fixtures/models/v3_halfsplit_tied_noqlora",
         {"train.seq_len": 10, "train.micro_batch": 2, "loss.seq_aux_alpha": 0.01}, True),
        ("v2 aux only (expert aux 0.01)", "tests/fixtures/models/v2_greedy_noqlora",
         {"train.seq_len": 10, "train.micro_batch": 2, "loss.expert_aux_alpha": 0.01}, True),
        ("v2 total (expert aux 0.05, group-limited)", "tests/fixtures/models/v2_group_limited_yarn",
         {"train.seq_len": 10, "train.micro_batch": 2, "loss.expert_aux_alpha": 0.05}, False),
    ]
    import shutil
    import tempfile
    tmp = tempfile.mkdtemp()
    two = os.path.join(tmp, "v3_mtp2")
    shutil.copytree(os.path.join(REPO, "tests/fixtures/models/v3_mtp"), two)
    add_mtp_module(two, seed=21)
    fd_cases.append(("v3 total (MTP depth 2, seq aux 0.01, B=2)", two,
                     {"train.seq_len": 9, "train.micro_batch": 2, "loss.mtp_depth": 2, "loss.mtp_lambda": 0.5,
                      "loss.seq_aux_alpha": 0.01}, False))
    for label, model_rel, over, aux_only in fd_cases:
        worst, done, skipped, rows, key, val = check_fd(model_rel, over, seed=11, aux_only=aux_only)
        report(f"finite differences, {label}", worst < 1e-5 and done >= 8,
               f"{done} entries (float64 model), worst rel.err {worst:.1e}, {skipped} skipped for a routing flip; "
               f"{key} = {val:.6f}")
    shutil.rmtree(tmp, ignore_errors=True)
    dm, dg = check_accum_equivalence("tests/fixtures/models/v3_mtp",
                                     {"train.seq_len": 12, "loss.mtp_depth": 1, "loss.mtp_lambda": 0.3,
                                      "loss.seq_aux_alpha": 0.01}, seed=5)
    report("B=2,A=2 == B=4,A=1 (loss, mtp, aux, grads)", dm < 1e-5 and dg < 1e-4,
           f"metrics rel.diff {dm:.1e}, grads rel.diff {dg:.1e}")
    worst, coefs = check_adamw_and_clip("tests/fixtures/models/v3_halfsplit_tied_noqlora",
                                        {"train.seq_len": 12, "optimizer.lr": 3e-3, "optimizer.clip_grad": 0.05},
                                        seed=3)
    report("AdamW + clip vs hand-written update (2 steps)", worst < 1e-4,
           f"max|param diff| / lr {worst:.1e}; clip coefficients {[round(c, 4) for c in coefs]}")
    bad = [n for n, ok in results if not ok]
    print(f"== {len(results) - len(bad)}/{len(results)} checks passed" + (f"; FAILED: {bad}" if bad else ""))
    return not bad


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    fx = sub.add_parser("fixtures", help="write tests/fixtures/train/<case>/")
    fx.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "train"))
    fx.add_argument("--only", nargs="*")
    sub.add_parser("check", help="reference self-checks")
    rn = sub.add_parser("run", help="run the reference on any checkpoint and token file")
    rn.add_argument("--model", required=True)
    rn.add_argument("--tokens", required=True)
    rn.add_argument("--out", required=True, help="directory for losses.json (and grads_step1.safetensors)")
    rn.add_argument("--set", action="append", default=[], metavar="section.key=value")
    rn.add_argument("--grads", action="store_true", help="also write grads_step1.safetensors")
    args = ap.parse_args()
    torch.set_num_threads(4)
    if args.cmd == "fixtures":
        for i, name in enumerate(CASES):
            if args.only and name not in args.only:
                continue
            build_case(name, args.out, seed=4242 + i)
    elif args.cmd == "check":
        sys.exit(0 if run_checks() else 1)
    elif args.cmd == "run":
        over = {}
        for kv in args.set:
            k, v = kv.split("=", 1)
            over[k] = parse_value(k, v)
        cfg = full_config(over)
        os.makedirs(args.out, exist_ok=True)
        def save_grads(ref, batches):
            save_file({k: v.contiguous() for k, v in ref.grads_by_checkpoint_name().items()},
                      os.path.join(args.out, "grads_step1.safetensors"), metadata={"format": "pt"})
        ref, records = run_reference(args.model, read_tokens(args.tokens), cfg, save_grads if args.grads else None)
        json.dump(records, open(os.path.join(args.out, "losses.json"), "w"), indent=1)
        if cfg["loss.bias_update_gamma"] > 0:
            save_file(ref.biases(), os.path.join(args.out, "bias_final.safetensors"), metadata={"format": "pt"})
        for r in records:
            print(json.dumps(r))
    else:
        ap.print_help()


if __name__ == "__main__":
    main()
