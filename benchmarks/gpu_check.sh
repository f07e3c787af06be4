#!/usr/bin/env bash
# Check trlsim's CUDA backend on a machine with an NVIDIA GPU, in about five
# minutes at most: install, run tests/test_cuda.py on the GPU (not Numba's
# simulator), then compare TRL-S training throughput of the CPU and CUDA
# backends (benchmarks/bench_backends.py). Stops at the first failure and says
# which stage failed.
#
#   bash benchmarks/gpu_check.sh
#   GPU_CHECK_SKIP_INSTALL=1 bash benchmarks/gpu_check.sh   # already installed
#   PYTHON=/path/to/python bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PYTHON=${PYTHON:-python3}
# The simulator must be off everywhere below.
unset NUMBA_ENABLE_CUDASIM

fail() {
    echo "gpu_check: FAILED: $*" >&2
    exit 1
}

stage() {
    echo
    echo "== $* ($(date +%T), ${SECONDS}s in)"
}

stage "GPU and driver"
command -v nvidia-smi >/dev/null 2>&1 ||
    fail "nvidia-smi not found: run this on a machine with an NVIDIA GPU and driver"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader ||
    fail "nvidia-smi cannot reach the NVIDIA driver"

stage "install trlsim with the test and cuda extras"
if [ "${GPU_CHECK_SKIP_INSTALL:-0}" = 1 ]; then
    echo "skipped (GPU_CHECK_SKIP_INSTALL=1)"
else
    timeout 150 "$PYTHON" -m pip install --quiet -e '.[test,cuda]' ||
        fail "pip install -e '.[test,cuda]' failed or timed out; without network," \
            "install numba-cuda by hand and rerun with GPU_CHECK_SKIP_INSTALL=1"
fi

stage "numba.cuda can use the GPU"
timeout 60 "$PYTHON" - <<'EOF' || fail "numba.cuda cannot use the GPU (cause above)"
from trlsim.backend import cuda_problem

problem = cuda_problem()
if problem is not None:
    raise SystemExit(problem)
from numba import cuda

name = cuda.get_current_device().name
print(name.decode() if isinstance(name, bytes) else name,
      "| numba.cuda:", getattr(cuda, "implementation", "?"))
EOF

stage "tests/test_cuda.py on the GPU"
TRLSIM_CUDA_TESTS=device timeout 180 "$PYTHON" -m pytest tests/test_cuda.py -q -x \
    -p no:cacheprovider ||
    fail "tests/test_cuda.py failed on the GPU (or ran past 180 s)"

stage "TRL-S throughput, CPU against CUDA"
timeout 200 "$PYTHON" benchmarks/bench_backends.py --backends cpu cuda --seconds 5 ||
    fail "benchmarks/bench_backends.py failed (or ran past 200 s)"

echo
echo "gpu_check: OK in ${SECONDS}s"
