"""Training throughput of one TRL step: trlsim's kernels against plain NumPy.

Both sides take the same step (spec section 3) on the same batches from the
same initial state: trlsim through ``Network.step`` (Numba kernels, all
threads), NumPy through :class:`trlsim.reference.ReferenceNetwork` run in
float32, whose matrix products go to the BLAS NumPy links (with its own
threads). Prints the median samples per second of each over several repeats,
and their ratio, measured in this one run.

    python benchmarks/bench_step.py                  # 784-512-256, batch 64
    python benchmarks/bench_step.py --sizes 784 2000 2000 --batch 128
"""

import argparse
import os
import platform
import time

import numba
import numpy as np

from trlsim import Network
from trlsim.reference import ReferenceNetwork


def samples_per_second(step, batches, repeats):
    """Median over ``repeats`` of samples/s for stepping through ``batches``."""
    step(batches[0])  # compile / warm caches outside the timing
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for x in batches:
            step(x)
        elapsed = time.perf_counter() - start
        rates.append(sum(len(x) for x in batches) / elapsed)
    return float(np.median(rates)), float(np.min(rates)), float(np.max(rates))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[784, 512, 256])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30, help="steps per repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rules", nargs="+", default=["trl-s", "trl"])
    args = parser.parse_args()

    print(f"# layers {'-'.join(map(str, args.sizes))}, batch {args.batch}, "
          f"{args.steps} steps x {args.repeats} repeats")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"numba {numba.__version__} with {numba.get_num_threads()} threads, "
          f"numpy {np.__version__}")
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(args.batch, args.sizes[0])).astype(np.float32)
               for _ in range(args.steps)]
    print(f"{'rule':6} {'implementation':16} {'samples/s (median)':>19} "
          f"{'min':>9} {'max':>9}")
    for rule in args.rules:
        net = Network(args.sizes, rule=rule, seed=0)
        numpy_net = ReferenceNetwork(net, dtype=np.float32)
        ours = samples_per_second(net.step, batches, args.repeats)
        theirs = samples_per_second(numpy_net.step, batches, args.repeats)
        for name, (median, low, high) in (("trlsim (numba)", ours),
                                          ("numpy (BLAS)", theirs)):
            print(f"{rule:6} {name:16} {median:19,.0f} {low:9,.0f} {high:9,.0f}")
        print(f"{rule:6} {'ratio':16} {ours[0] / theirs[0]:19.2f}")


if __name__ == "__main__":
    main()
