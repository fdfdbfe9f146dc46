#!/usr/bin/env bash
# Issue 6 end to end on the GPU host with bench-16b-l4 (random init, ~2.1B parameters):
# preprocess -> train on CUDA -> kill -> resume -> export -> reload. Checks: the resumed run's
# losses equal the uninterrupted run's bit for bit; `dsv logits --device cuda` of the exported
# checkpoint equals that of the uninterrupted run's final weights; transformers loads the export and
# matches our logits. Assumes build/cuda was built (scripts/gpu_train_check.sh). Logs go to $OUT.
# A checkpoint of this model is ~25 GB (fp32 weights + Adam m, v); they live in /dev/shm when it is
# large enough, and keep_last = 1.
set -euo pipefail
OUT=${OUT:-/tmp/dsv_out}; mkdir -p "$OUT"
DSV=./build/cuda/tools/dsv/dsv
W=${E2E_WORK:-/tmp/e2e}; rm -rf "$W"; mkdir -p "$W"
CK=/dev/shm/dsv_e2e_ckpt; rm -rf "$CK"
CONFIG=.deps/shared/configs/bench/bench-16b-l4.json
STEPS=${E2E_STEPS:-4}
$DSV preprocess --input data/debug/corpus.jsonl --tokenizer models/tiny --output-prefix "$W/corpus" 2>&1 | tail -1
RUN=($DSV train --recipe recipes/debug.toml --set model.config=$CONFIG --set data.paths=$W/corpus
     --set data.split=95,5 --set train.eval_interval=2 --set train.eval_iters=1 --device cuda
     --set train.seq_len=${E2E_SEQ:-1024} --set train.micro_batch=2 --set loss.seq_aux_alpha=0
     --set loss.bias_update_gamma=0 --set optimizer.warmup_steps=1 --set output.log_interval=1
     --set output.tokenizer=models/tiny --set checkpoint.keep_last=1 --steps $STEPS)
echo "== uninterrupted run"
"${RUN[@]}" --metrics-jsonl "$OUT/e2e_full.jsonl" --out "$W/full_model" 2>&1 | tail -3
echo "== killed after step 3 (last checkpoint: step 2)"
set +e
DSV_TEST_KILL_AFTER_STEP=3 "${RUN[@]}" --save "$CK" --save-interval 2 --metrics-jsonl "$OUT/e2e_killed.jsonl" > "$OUT/e2e_killed.log" 2>&1
echo "exit code $? (expected: killed)"; set -e
cat "$CK/latest"
echo "== resumed"
"${RUN[@]}" --save "$CK" --save-interval 2 --load "$CK" --metrics-jsonl "$OUT/e2e_resumed.jsonl" 2>&1 | tail -3
python3 - "$OUT/e2e_full.jsonl" "$OUT/e2e_resumed.jsonl" <<'PY'
import json, sys
full = {}
for line in open(sys.argv[1]):
    r = json.loads(line); full.setdefault(r["step"], {}).update(r)
res = {}
for line in open(sys.argv[2]):
    r = json.loads(line); res.setdefault(r["step"], {}).update(r)
bad = 0
for s in sorted(res):
    for k in ("loss", "grad_norm", "val_loss"):
        if k in res[s] and res[s][k] != full[s].get(k):
            bad += 1; print(f"step {s} {k}: resumed {res[s][k]!r} vs uninterrupted {full[s].get(k)!r}")
print(f"resumed steps {sorted(res)}: {'identical to the uninterrupted run' if not bad else f'{bad} differences'}")
sys.exit(1 if bad else 0)
PY
echo "== export (fp32) and reload"
$DSV export --checkpoint "$CK" --out "$W/hf" --dtype fp32 --max-shard-size 2GB 2>&1 | tail -1
ls "$W/hf" | head -20
IDS=1,17,42,99,7,300,5,12
$DSV logits --model "$W/hf" --ids $IDS --out "$W/exported.npy" --device cuda
$DSV logits --model "$W/full_model" --ids $IDS --out "$W/full.npy" --device cuda
cmp "$W/exported.npy" "$W/full.npy" && echo "logits of the exported checkpoint == logits of the uninterrupted run (bit for bit)"
rm -rf "$CK"
python3 tests/ref/check_hf_logits.py --model "$W/hf" --ids $IDS --logits "$W/exported.npy" --device cuda
echo "== export bf16"
$DSV export --checkpoint "$W/hf" --out "$W/hf_bf16" --dtype bf16 2>&1 | tail -1
du -sh "$W/hf" "$W/hf_bf16"
