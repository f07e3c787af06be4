"""Cost of recording a trace while training, on the MNIST example network.

Trains 784-512-256 TRL-S on MNIST for one epoch at a time, alternately without
and with a recorder sampling the memory units and losses every 10 steps and
weights, biases and lateral matrices once an epoch (plus the snapshot at the
end), and prints the median samples per second of each and the overhead.

    TRLSIM_DATA=/path/to/data python benchmarks/bench_record.py [--repeats 3]
"""

import argparse
import os
import tempfile
import time

import numpy as np

import trlsim
from trlsim.record import Recorder
from trlsim.streams import Stream
from trlsim.train import Trainer


def one_epoch(data, record_to=None, epoch=0):
    net = trlsim.Network([784, 512, 256], rule="trl-s", seed=42)
    stream = Stream(data.train_x, data.train_y, 64, 16, seed=0)
    observers = []
    if record_to is not None:
        observers.append(Recorder(
            record_to, net, fields=("mean", "var", "prev", "losses", "weights",
                                    "bias", "lateral"),
            every=10, weights_every=stream.n_batches, overwrite=True))
    trainer = Trainer(net, stream, epochs=1, observers=observers)
    start = time.perf_counter()
    result = trainer.run()
    for observer in observers:
        observer.close()
    elapsed = time.perf_counter() - start
    size = os.path.getsize(record_to) if record_to else 0
    return result.samples / elapsed, size


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = trlsim.load_dataset("mnist")
    one_epoch(data)  # compile and warm up
    plain, recorded, sizes = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.h5")
        for _ in range(args.repeats):
            plain.append(one_epoch(data)[0])
            rate, size = one_epoch(data, path)
            recorded.append(rate)
            sizes.append(size)
    p, r = float(np.median(plain)), float(np.median(recorded))
    print(f"without recording  {p:10,.0f} samples/s (median of {args.repeats})")
    print(f"with recording     {r:10,.0f} samples/s (median of {args.repeats})")
    print(f"overhead           {100 * (p / r - 1):10.1f} % of training time")
    print(f"trace size         {np.median(sizes) / 2**20:10.1f} MiB per epoch")


if __name__ == "__main__":
    main()
