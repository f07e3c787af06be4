"""Training throughput of one TRL step: trlsim's kernels against plain NumPy.

Both sides take the same step (spec section 3) on the same batches from the
same initial state: trlsim through ``Network.step`` (Numba kernels, all
threads), NumPy through :class:`trlsim.reference.ReferenceNetwork` run in
float32, whose matrix products go to the BLAS NumPy links (with its own
threads). The two take turns in each repeat; the script prints the median
samples per second of each and their ratio, measured in this one run.

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


def samples_per_second(steps, batches, repeats):
    """Median, min and max samples/s of each of ``steps`` over ``repeats``.

    The implementations take turns within each repeat, so a change in the
    machine's load affects them alike.
    """
    for step in steps:
        step(batches[0])  # compile / warm caches outside the timing
    rates = [[] for _ in steps]
    for _ in range(repeats):
        for step, out in zip(steps, rates):
            start = time.perf_counter()
            for x in batches:
                step(x)
            out.append(sum(len(x) for x in batches) / (time.perf_counter() - start))
    return [(float(np.median(r)), float(np.min(r)), float(np.max(r))) for r in rates]


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
        ours, theirs = samples_per_second([net.step, numpy_net.step], batches,
                                          args.repeats)
        for name, (median, low, high) in (("trlsim (numba)", ours),
                                          ("numpy (BLAS)", theirs)):
            print(f"{rule:6} {name:16} {median:19,.0f} {low:9,.0f} {high:9,.0f}")
        print(f"{rule:6} {'ratio':16} {ours[0] / theirs[0]:19.2f}")


if __name__ == "__main__":
    main()
