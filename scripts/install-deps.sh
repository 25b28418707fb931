#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build, test and benchmark
# processmanager. Does nothing (and needs no network) when all is present.
set -euo pipefail

packages=(g++ cmake ninja-build make pkg-config libboost1.81-dev libboost-json1.81-dev
          libgtest-dev libgmock-dev libbenchmark-dev clang-tidy clang-format curl doxygen
          python3-prometheus-client libspdlog-dev prometheus-cpp-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing: ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
