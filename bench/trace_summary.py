#!/usr/bin/env python3
"""Summarize a kernel timeline written by bench/kernel_trace.cpp (CUPTI, no Nsight Systems needed).

For captured graphs (decode steps), each replay is one group of kernel records sharing a correlation
id. Per replay the kernels are ordered by end time; a kernel's *advance* is how far it moves the
replay's finished frontier (its end minus the latest end before it). Advances sum to the replay's
span less its first kernel, so they say what each node costs on the critical path, which durations
do not where launches overlap (programmatic dependent launch, side streams). Medians over replays.

  python3 bench/trace_summary.py trace.csv [--graph-min-kernels 10] [--skip 1] [--by-name]

Also prints the period between replays and the idle time between one replay's end and the next
one's start (host work, copies), and, for kernels outside graphs, total time by name.
"""
import argparse
import csv
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict

_demangled = {}


def demangle_all(names):
    """Readable kernel names through c++filt where it is installed (CUPTI gives mangled ones)."""
    names = sorted(set(names))
    if shutil.which("c++filt"):
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.split("\n")
        if len(out) >= len(names):
            _demangled.update(zip(names, out))


def short(name, width=70):
    name = _demangled.get(name, name).replace("(anonymous namespace)::", "").replace("dsv::ops::cuda::", "")
    cut = name.find("(")  # drop the parameter list
    name = name[:cut] if cut > 0 else name
    return name if len(name) <= width else name[: width - 3] + "..."


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--graph-min-kernels", type=int, default=10,
                    help="replays with fewer kernels are ignored (default 10)")
    ap.add_argument("--skip", type=int, default=1, help="replays skipped at the start (default 1)")
    ap.add_argument("--by-name", action="store_true", help="also sum advances per kernel name")
    args = ap.parse_args()

    rows = []
    try:
        with open(args.trace, newline="") as f:
            for r in csv.DictReader(f):
                r["start"], r["end"] = int(r["start_ns"]), int(r["end_ns"])
                rows.append(r)
    except OSError as e:
        sys.exit(f"{args.trace}: cannot read: {e.strerror}")
    except (KeyError, TypeError, ValueError):
        sys.exit(f"{args.trace}: not a kernel_trace.cpp CSV (expected the columns kind,start_ns,end_ns,...)")
    if not rows:
        sys.exit(f"{args.trace}: no records")
    demangle_all(r["name"] for r in rows)

    replays = defaultdict(list)
    eager = defaultdict(lambda: [0, 0])
    for r in rows:
        if r["kind"] == "kernel" and r["graph"] != "0":
            replays[r["correlation"]].append(r)
        elif r["kind"] == "kernel":
            e = eager[r["name"]]
            e[0] += 1
            e[1] += r["end"] - r["start"]
    groups = sorted((g for g in replays.values() if len(g) >= args.graph_min_kernels),
                    key=lambda g: min(k["start"] for k in g))
    groups = groups[args.skip:]

    if eager:
        total = sum(v[1] for v in eager.values())
        print(f"kernels outside graphs: {sum(v[0] for v in eager.values())} launches, {total / 1e6:.3f} ms of kernel time")
        for name, (n, t) in sorted(eager.items(), key=lambda kv: -kv[1][1])[:25]:
            print(f"  {t / 1e3:10.1f} us  {n:6d}x  {short(name)}")
        print()

    if not groups:
        print("no graph replays found")
        return
    sizes = defaultdict(int)
    for g in groups:
        sizes[len(g)] += 1
    size = max(sizes, key=sizes.get)  # the common replay (one graph)
    groups = [g for g in groups if len(g) == size]
    starts = [min(k["start"] for k in g) for g in groups]
    ends = [max(k["end"] for k in g) for g in groups]
    spans = [e - s for s, e in zip(starts, ends)]
    periods = [b - a for a, b in zip(starts, starts[1:])]
    idles = [s - e for e, s in zip(ends, starts[1:])]
    print(f"{len(groups)} replays of a {size}-kernel graph")
    print(f"  span (first kernel start to last end): median {statistics.median(spans) / 1e3:.1f} us")
    if periods:
        print(f"  period (start to next start):          median {statistics.median(periods) / 1e3:.1f} us")
        print(f"  idle between replays:                   median {statistics.median(idles) / 1e3:.1f} us")

    # Per node: start offset, duration and advance, medians over replays.
    per_node = defaultdict(lambda: {"start": [], "dur": [], "adv": []})
    info = {}
    for g, t0 in zip(groups, starts):
        frontier = t0
        for k in sorted(g, key=lambda k: k["end"]):
            node = k["node"]
            d = per_node[node]
            d["start"].append(k["start"] - t0)
            d["dur"].append(k["end"] - k["start"])
            d["adv"].append(max(0, k["end"] - frontier))
            frontier = max(frontier, k["end"])
            info[node] = k
    order = sorted(per_node, key=lambda n: statistics.median(per_node[n]["start"]))
    print(f"\n{'start us':>9} {'dur us':>7} {'adv us':>7} {'stream':>6} {'grid':>13}  kernel")
    adv_total = 0.0
    by_name = defaultdict(lambda: [0, 0.0, 0.0])
    for n in order:
        d, k = per_node[n], info[n]
        s, du, a = (statistics.median(d[x]) / 1e3 for x in ("start", "dur", "adv"))
        adv_total += a
        grid = f"{k['grid_x']}x{k['grid_y']}x{k['grid_z']}"
        print(f"{s:9.1f} {du:7.2f} {a:7.2f} {k['stream']:>6} {grid:>13}  {short(k['name'])}")
        b = by_name[short(k["name"], 60)]
        b[0] += 1
        b[1] += du
        b[2] += a
    print(f"sum of median advances {adv_total:.1f} us")
    if args.by_name:
        print(f"\n{'calls':>5} {'dur us':>8} {'adv us':>8}  kernel")
        for name, (n, du, a) in sorted(by_name.items(), key=lambda kv: -kv[1][2]):
            print(f"{n:5d} {du:8.1f} {a:8.1f}  {name}")


if __name__ == "__main__":
    main()
