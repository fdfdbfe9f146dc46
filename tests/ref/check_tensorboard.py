#!/usr/bin/env python3
"""TensorBoard reads our event files: the C++ writer (src/train/tensorboard.cpp) against TensorBoard's own
EventAccumulator.

    pip install tensorboard
    python3 tests/ref/check_tensorboard.py --tests build/cpu/tests/dsv_tests
    python3 tests/ref/check_tensorboard.py --logdir runs/my_run --metrics runs/my_run.jsonl   # a real run

With --tests it runs the gtest TensorBoard.ReferenceRun, which writes the same six steps (and two
validation losses) through MetricsWriter and TensorBoardWriter into one directory. Either way it loads
the directory with EventAccumulator and compares every scalar TensorBoard sees with the JSONL line of the
same step: train/loss, train/mtp_loss, train/aux_loss, train/grad_norm, train/lr, train/tokens_per_second,
train/mfu, train/expert_imbalance/layer_<i>, val/loss (float32 on the TensorBoard side, so relative 1e-6).
It also checks that TensorBoard found no other tags and every step once. Exits non-zero on any failure.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

TAGS = {
    "train/loss": "loss",
    "train/mtp_loss": "mtp_loss",
    "train/aux_loss": "aux_loss",
    "train/grad_norm": "grad_norm",
    "train/lr": "lr",
    "train/tokens_per_second": "tokens_per_second",
    "train/mfu": "mfu",
}


def expected_scalars(metrics_path):
    """{tag: {step: value}} from the JSONL, with the tag names TensorBoardWriter uses."""
    want = {}
    with open(metrics_path) as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            step = rec["step"]
            if "val_loss" in rec:
                want.setdefault("val/loss", {})[step] = rec["val_loss"]
                continue
            for tag, key in TAGS.items():
                want.setdefault(tag, {})[step] = rec[key]
            for i, v in enumerate(rec.get("expert_imbalance") or []):
                want.setdefault(f"train/expert_imbalance/layer_{i}", {})[step] = v
    return want


def close(got, want):
    if want is None:  # JSON null: the run wrote NaN or Inf
        return not math.isfinite(got)
    return math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-30) or (want != 0 and abs(got - want) <= abs(want) * 1e-6)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tests", help="dsv_tests binary: run TensorBoard.ReferenceRun into a temporary directory")
    ap.add_argument("--logdir", help="a directory with events.out.tfevents.* files")
    ap.add_argument("--metrics", help="the JSONL written beside them (default LOGDIR/metrics.jsonl)")
    args = ap.parse_args()
    if not args.tests and not args.logdir:
        ap.error("give --tests or --logdir")

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tmp = None
    logdir = args.logdir
    if args.tests:
        tmp = tempfile.TemporaryDirectory(prefix="dsv_tb_")
        logdir = tmp.name
        env = dict(os.environ, DSV_TB_REF_DIR=logdir)
        subprocess.run([args.tests, "--gtest_filter=TensorBoard.ReferenceRun"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    metrics = args.metrics or os.path.join(logdir, "metrics.jsonl")
    files = [n for n in os.listdir(logdir) if n.startswith("events.out.tfevents.")]
    print(f"event files: {files}")

    acc = EventAccumulator(logdir, size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    got_tags = set(acc.Tags()["scalars"])
    want = expected_scalars(metrics)
    failures = []
    if got_tags != set(want):
        failures.append(f"tags differ: TensorBoard has {sorted(got_tags)}, the JSONL implies {sorted(want)}")
    compared = 0
    for tag in sorted(set(want) & got_tags):
        events = acc.Scalars(tag)
        steps = [e.step for e in events]
        if sorted(steps) != sorted(want[tag]) or len(set(steps)) != len(steps):
            failures.append(f"{tag}: TensorBoard steps {steps}, JSONL steps {sorted(want[tag])}")
            continue
        for e in events:
            compared += 1
            if not close(e.value, want[tag][e.step]):
                failures.append(f"{tag} step {e.step}: TensorBoard {e.value!r}, JSONL {want[tag][e.step]!r}")
    print(f"{len(got_tags)} tags, {compared} scalars compared with {metrics}")
    for f in failures:
        print("FAIL:", f)
    if tmp:
        tmp.cleanup()
    if failures:
        sys.exit(1)
    print("OK: TensorBoard reads every scalar the JSONL holds")


if __name__ == "__main__":
    main()
