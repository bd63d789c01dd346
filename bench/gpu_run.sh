#!/usr/bin/env bash
# The GPU benchmark on a CUDA machine with no network, from a bundle made by
# `python -m voxloop.bench.gpu_bundle` (see "On a GPU" in README.md). Run from the voxloop checkout:
#
#   bench/gpu_run.sh stage DIR      add the bundle parts in DIR (bundle.json and/or parts) to $WORK
#   bench/gpu_run.sh install        check and unpack the parts, install the wheels, build llama.cpp with CUDA
#   bench/gpu_run.sh models         check and unpack the extra models' parts (models.tar.part*) into $WORK/models
#   bench/gpu_run.sh bench ARGS...  voxloop bench with the GPU serve arguments; ARGS go to voxloop bench
#   bench/gpu_run.sh serve-args     print those serve arguments
#   bench/gpu_run.sh asr-device     print where Whisper runs: cuda or cpu
#   bench/gpu_run.sh asr-cost ARGS  what larger Whispers would cost there (bench/asr_cost.py); ARGS go to it
#
# Needs python3 with PyTorch, nvcc, cmake, ninja and scikit-build-core (a CUDA PyTorch image has them).
# WORK (default /tmp/voxloop-gpu) keeps the parts, the unpacked bundle and the installed packages;
# CUDA_ARCHITECTURES (default: native) picks the GPUs llama.cpp is compiled for.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${VOXLOOP_GPU_WORK:-/tmp/voxloop-gpu}
SITE=$WORK/site
PYTHON=${PYTHON:-python3}
# Where install() links cuBLAS 13 under the name CTranslate2 loads (see cublas12_link).
CUBLAS12=$WORK/cublas12
[ -d "$CUBLAS12" ] && export LD_LIBRARY_PATH=$CUBLAS12${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

stage() {
    # A folder may hold bundle.json, some parts, or both (uploads are small, so one part per call).
    local files=()
    [ -f "$1/bundle.json" ] && files+=("$1/bundle.json")
    shopt -s nullglob
    files+=("$1"/bundle.tar.part* "$1"/models.tar.part*)
    shopt -u nullglob
    [ ${#files[@]} -gt 0 ] || { echo "nothing to stage in '$1': no bundle.json, bundle.tar.part* or models.tar.part* there" >&2; exit 1; }
    mkdir -p "$WORK/parts"
    cp -v "${files[@]}" "$WORK/parts/"
    ls "$WORK/parts"
}

install() {
    local parts=$WORK/parts
    [ -f "$parts/bundle.json" ] || { echo "no bundle.json in $parts: stage the bundle first" >&2; exit 1; }
    check_parts parts
    rm -rf "$WORK/bundle" && mkdir -p "$WORK/bundle"
    cat "$parts"/bundle.tar.part* | tar -x -C "$WORK/bundle"
    echo "installing wheels into $SITE"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WORK"/bundle/wheels/*.whl
    if ! ls "$WORK"/bundle/wheels/voxloop-*.whl >/dev/null 2>&1; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" .
    fi
    echo "building llama-cpp-python with CUDA (a few minutes)"
    local started=$SECONDS
    CMAKE_ARGS="-DGGML_CUDA=on -DLLAVA_BUILD=off -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES:-native}" \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" \
        "$WORK"/bundle/llama_cpp_python-*.tar.xz
    echo "llama.cpp built in $((SECONDS - started)) s"
    PYTHONPATH=$SITE "$PYTHON" -c "import llama_cpp; print('llama.cpp GPU offload:', llama_cpp.llama_supports_gpu_offload())"
    cublas12_link
}

check_parts() {
    # $1: the bundle.json key that lists the parts to check ("parts" or "model_parts").
    echo "checking the $1 against bundle.json"
    "$PYTHON" - "$WORK/parts" "$1" <<'EOF'
import hashlib, json, pathlib, sys
parts, key = pathlib.Path(sys.argv[1]), sys.argv[2]
expected = json.loads((parts / "bundle.json").read_text()).get(key, {})
if not expected:
    sys.exit(f"bundle.json lists no {key}")
missing = [name for name in expected if not (parts / name).exists()]
if missing:
    sys.exit(f"missing parts: {', '.join(missing)}")
for name, digest in expected.items():
    if hashlib.sha256((parts / name).read_bytes()).hexdigest() != digest:
        sys.exit(f"{name} is corrupt (sha256 differs from bundle.json)")
print(f"{len(expected)} parts intact")
EOF
}

models() {
    [ -f "$WORK/parts/bundle.json" ] || { echo "no bundle.json in $WORK/parts: stage the bundle first" >&2; exit 1; }
    check_parts model_parts
    mkdir -p "$WORK/models"
    cat "$WORK/parts"/models.tar.part* | tar -x -C "$WORK/models"
    ls -l "$WORK/models"
}

cublas12_link() {
    # CTranslate2's wheels are built for CUDA 12: they dlopen libcublas.so.12 and call nine cuBLAS
    # entry points (create/destroy, stream and math mode, Sgemm, GemmEx and their batched forms),
    # all unchanged in cuBLAS 13. On a CUDA 13 image without CUDA 12, a link of that name to the
    # image's libcublas.so.13 lets Whisper run on the GPU; the bench's WER shows if it misbehaves.
    if [ "$(asr_device)" = cuda ]; then echo "Whisper runs on: cuda"; return; fi
    local cublas13
    cublas13=$(find /opt /usr/local /usr/lib -name 'libcublas.so.13*' 2>/dev/null | head -1)
    [ -n "$cublas13" ] || { echo "no libcublas.so.13 here either: Whisper runs on: cpu"; return; }
    mkdir -p "$CUBLAS12"
    ln -sf "$cublas13" "$CUBLAS12/libcublas.so.12"
    ln -sf "$(dirname "$cublas13")"/libcublasLt.so.13* "$CUBLAS12/"
    export LD_LIBRARY_PATH=$CUBLAS12${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    if [ "$(asr_device)" = cuda ]; then
        echo "CTranslate2 runs on cuBLAS 13 through $CUBLAS12/libcublas.so.12 -> $cublas13; Whisper runs on: cuda"
    else
        rm -rf "$CUBLAS12"
        echo "CTranslate2 does not run on cuBLAS 13 either: Whisper runs on: cpu"
    fi
}

asr_device() {
    # CTranslate2's wheels are built against CUDA 12; on a CUDA 13 machine Whisper stays on the CPU.
    PYTHONPATH=$SITE "$PYTHON" - "$WORK/bundle/models/whisper-tiny.en" <<'EOF' 2>/dev/null || echo cpu
import sys, numpy
from faster_whisper import WhisperModel
model = WhisperModel(sys.argv[1], device="cuda", compute_type="float16")
list(model.transcribe(numpy.zeros(16000, dtype=numpy.float32))[0])
print("cuda")
EOF
}

serve_args() {
    local models=$WORK/bundle/models device
    device=$(asr_device)
    local compute=int8
    [ "$device" = cuda ] && compute=float16
    echo "--asr-model $models/whisper-tiny.en --asr-device $device --asr-compute-type $compute" \
         "--llm-gguf $(ls "$models"/*.gguf) --llm-gpu-layers -1 --piper-voice $(ls "$models"/*.onnx)"
}

bench() {
    local args
    args=$(serve_args)
    echo "serve args: $args"
    VOXLOOP_SPEECH_DIR=$WORK/bundle/speech PYTHONPATH=$SITE PYTHONUNBUFFERED=1 \
        "$PYTHON" -m voxloop.client.cli bench --serve-args "$args" --label gpu "$@"
}

asr_cost() {
    local device
    device=$(asr_device)
    VOXLOOP_SPEECH_DIR=$WORK/bundle/speech PYTHONPATH=$SITE PYTHONUNBUFFERED=1 \
        "$PYTHON" -m voxloop.bench.asr_cost --device "$device" --reference-model "$WORK/bundle/models/whisper-tiny.en" "$@"
}

case "${1:-}" in
    stage) stage "$2" ;;
    install) install ;;
    models) models ;;
    serve-args) serve_args ;;
    asr-device) asr_device ;;
    bench) shift; bench "$@" ;;
    asr-cost) shift; asr_cost "$@" ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
esac
