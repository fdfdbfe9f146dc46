#!/usr/bin/env bash
# The main job on the bundled tiny model: install what is missing, build (CPU), train the debug
# recipe (models/tiny's architecture from random weights, on the project-made text of data/debug,
# a few hundred CPU steps), then generate from the trained checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
cmake --preset cpu > /dev/null
cmake --build --preset cpu -j"$(nproc)" --target dsv
DSV=./build/cpu/tools/dsv/dsv
RUN=build/debug-run
$DSV train --recipe recipes/debug.toml --out "$RUN" --metrics-jsonl "$RUN.metrics.jsonl"
echo
$DSV info "$RUN"
echo
$DSV generate --model "$RUN" --prompt "${1:-7 plus 5 is}" --max-new-tokens 24 --temperature 0
