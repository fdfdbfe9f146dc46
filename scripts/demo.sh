#!/usr/bin/env bash
# The main job on the bundled tiny model: install what is missing, build (CPU), show the model,
# generate from a text prompt.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
cmake --preset cpu > /dev/null
cmake --build --preset cpu -j"$(nproc)" --target dsv
./build/cpu/tools/dsv/dsv info models/tiny
echo
./build/cpu/tools/dsv/dsv generate --model models/tiny --prompt "${1:-A language model reads tokens}" \
  --max-new-tokens 24 --temperature 0.8 --top-p 0.95 --seed 7
