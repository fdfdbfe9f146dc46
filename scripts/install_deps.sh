#!/usr/bin/env bash
# Installs the Debian packages dsv builds with, only those that are missing (Debian 12).
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config git python3
      nlohmann-json3-dev libcli11-dev libfmt-dev libtomlplusplus-dev libpcre2-dev libopenblas-dev
      libgtest-dev libgmock-dev libcpp-httplib-dev)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
