"""Online (batch 1) throughput: trlsim's compiled block loop against NumPy.

Both sides learn from the same samples one at a time from the same state:
trlsim through ``Network.step`` on a block (the per-sample loop runs inside
Numba), NumPy through :class:`trlsim.reference.OnlineReference` in float32,
one Python call per sample. At batch 1 each sample must stream every weight,
its optimizer moments and the lateral state through memory, so the script
also estimates the bytes moved per sample and compares the rate they imply
with this machine's measured memory bandwidth (a large NumPy copy).

    python benchmarks/bench_online.py [--sizes 784 512 256] [--samples 500]
"""

import argparse
import time

import numba
import numpy as np

from trlsim import Network
from trlsim.reference import OnlineReference


def bandwidth(size_mb=256, repeats=5):
    """Median GB/s of ``dst[:] = src`` (counted as read + write)."""
    src = np.ones(size_mb * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        dst[:] = src
        rates.append(2 * src.nbytes / (time.perf_counter() - start) / 1e9)
    return float(np.median(rates))


def bytes_per_sample(network):
    """Bytes a learning sample must read and write, at the least."""
    total = 0
    adam = network.settings.optimizer == "adam"
    for layer in network.layers:
        w = layer.weights.nbytes + layer.bias.nbytes
        lat = layer.lateral.nbytes
        # Forward reads W; the update reads and writes W and its moments.
        total += w + 2 * w * (3 if adam else 2)
        # The lateral pass reads L; its update reads and writes L, moments and
        # (gradient rule) the covariance estimate.
        total += lat + 2 * lat * (3 if adam else 2) + 2 * layer.covariance.nbytes
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[784, 512, 256])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--numpy-samples", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    net = Network(args.sizes, online=True, seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.samples, args.sizes[0])).astype(np.float32)
    net.step(x[:2])  # compile outside the timing
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        net.step(x)
        rates.append(args.samples / (time.perf_counter() - start))
    ours = float(np.median(rates))

    reference = OnlineReference(net, dtype=np.float32)
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for row in x[: args.numpy_samples]:
            reference.step(row)
        rates.append(args.numpy_samples / (time.perf_counter() - start))
    theirs = float(np.median(rates))

    moved = bytes_per_sample(net)
    gbs = bandwidth()
    print(f"# layers {'-'.join(map(str, args.sizes))}, batch 1, "
          f"numba threads {numba.get_num_threads()}, medians of {args.repeats}")
    print(f"trlsim (compiled block loop) {ours:10,.0f} samples/s")
    print(f"numpy (per-sample loop)      {theirs:10,.0f} samples/s")
    print(f"ratio                        {ours / theirs:10.2f}")
    print(f"bytes per sample (at least)  {moved / 2**20:10.1f} MiB")
    print(f"memory bandwidth (copy)      {gbs:10.1f} GB/s")
    print(f"bound at that bandwidth      {gbs * 1e9 / moved:10,.0f} samples/s "
          f"(trlsim reaches {100 * ours * moved / (gbs * 1e9):.0f}%)")


if __name__ == "__main__":
    main()
