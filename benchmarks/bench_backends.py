"""Training throughput of TRL-S on the CPU and CUDA backends, on one machine.

Each case is a layer stack and a batch size; each backend builds the same
network (seed 0), takes two warm-up steps (compilation, and on CUDA the first
upload of the layers), then steps through random batches for ``--seconds``
and reports samples per second. A CUDA step returns only once its loss sums
are back on the host, so wall time is the GPU's time too.

    python benchmarks/bench_backends.py                      # cpu and cuda
    python benchmarks/bench_backends.py --backends cpu       # no GPU needed
    python benchmarks/bench_backends.py --case 784-512-256:64 --seconds 3
"""

import argparse
import os
import platform
import sys
import time

import numba
import numpy as np

from trlsim import Network
from trlsim.backend import BackendError, get_backend

DEFAULT_CASES = ("784-512-256:64", "784-512-256:1024", "784-2000-2000-2000-2000:64")


def parse_case(text):
    """``"784-512-256:64"`` -> ``([784, 512, 256], 64)``."""
    try:
        sizes, batch = text.split(":")
        return [int(n) for n in sizes.split("-")], int(batch)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a case is layer sizes and a batch, e.g. 784-512-256:64; got {text!r}"
        ) from None


def measure(sizes, batch, backend, seconds, warmup=2, n_batches=8):
    """Samples per second of ``Network.step``, and the warm-up time."""
    rng = np.random.default_rng(0)
    batches = [
        rng.normal(size=(batch, sizes[0])).astype(np.float32) for _ in range(n_batches)
    ]
    net = Network(sizes, rule="trl-s", seed=0, backend=backend)

    start = time.perf_counter()
    for i in range(warmup):
        net.step(batches[i % n_batches])
    warm = time.perf_counter() - start

    steps = 0
    start = time.perf_counter()
    while True:
        net.step(batches[steps % n_batches])
        steps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and steps >= 3:
            break
    return steps * batch / elapsed, elapsed / steps, warm


def describe(backend):
    """One line about the hardware a backend runs on."""
    if backend == "cuda":
        from numba import cuda

        if numba.config.ENABLE_CUDASIM:
            return "cuda: Numba's CUDA simulator (no GPU; times mean nothing)"
        name = cuda.get_current_device().name
        name = name.decode() if isinstance(name, bytes) else name
        return f"cuda: {name}, numba.cuda {getattr(cuda, 'implementation', '?')}"
    return (
        f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} "
        f"cores, numba {numba.__version__} with {numba.get_num_threads()} "
        f"threads"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backends", nargs="+", choices=("cpu", "cuda"), default=["cpu", "cuda"]
    )
    parser.add_argument(
        "--case",
        dest="cases",
        type=parse_case,
        action="append",
        help="layer sizes and batch, e.g. 784-512-256:64 "
        "(repeatable; default: %s)" % ", ".join(DEFAULT_CASES),
    )
    parser.add_argument(
        "--seconds", type=float, default=6.0, help="timed stepping per case and backend"
    )
    args = parser.parse_args(argv)
    cases = args.cases or [parse_case(c) for c in DEFAULT_CASES]

    for backend in args.backends:
        try:
            get_backend(backend)
        except BackendError as err:
            print(f"bench_backends: {err}", file=sys.stderr)
            return 2
        print(f"# {describe(backend)}")

    print(
        f"{'layers':28} {'batch':>6} {'backend':8} {'samples/s':>11} "
        f"{'ms/step':>9} {'warm-up s':>10}"
    )
    for sizes, batch in cases:
        rates = {}
        for backend in args.backends:
            rate, step_time, warm = measure(sizes, batch, backend, args.seconds)
            rates[backend] = rate
            print(
                f"{'-'.join(map(str, sizes)):28} {batch:6d} {backend:8} "
                f"{rate:11.0f} {step_time * 1e3:9.2f} {warm:10.1f}",
                flush=True,
            )
        if len(rates) == 2:
            print(f"{'':28} {'':6} cuda/cpu {rates['cuda'] / rates['cpu']:10.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
