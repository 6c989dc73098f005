"""Batched training of many small memories against the same memories trained one at a time (SPEC §7).

    python bench/capacity.py                        # 32 linear memories d=8, N=64, 200 steps each
    python bench/capacity.py --n 32 --model mlp --d 8 --m 16 --N 128

Both ways run interleaved in one process, ``--repeats`` times (the machine may be shared: interleaving
exposes both ways to the same load); prints model-steps per second both ways per repeat, the median
speed-up in wall-clock and in this process's CPU time (less sensitive to other jobs), the machine (os.cpu_count, processor, torch threads) and the load average before and after. N is
chosen above capacity so that no memory stops early and both ways do the same work; the largest difference
between a batched model's loss curve and its single run is printed as a check.
"""
import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dynamics.capacity_training import MemoryTrainConfig, train_batch, train_one  # noqa: E402
from models.memory import MemoryConfig  # noqa: E402


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=32, help="number of memories (seeds x learning rates); default 32")
    p.add_argument("--model", default="linear", choices=("linear", "mlp"), help="default linear")
    p.add_argument("--d", type=int, default=8, help="embedding dimension (default 8)")
    p.add_argument("--m", type=int, default=16, help="MLP width (mlp only; default 16)")
    p.add_argument("--N", type=int, default=64, help="facts per memory (default 64, above capacity at d=8)")
    p.add_argument("--steps", type=int, default=200, help="Adam steps per memory (default 200)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats of both ways (default 5)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="default float32")
    a = p.parse_args(argv)
    m = a.m if a.model == "mlp" else 0
    lrs = [3e-2, 1e-2]
    configs = [MemoryConfig(model=a.model, N=a.N, d=a.d, m=m, seed=i // len(lrs)) for i in range(a.n)]
    rates = [lrs[i % len(lrs)] for i in range(a.n)]
    train = MemoryTrainConfig(max_steps=a.steps, dtype=a.dtype)
    print(f"machine: os.cpu_count()={os.cpu_count()} processor={platform.processor() or platform.machine()!r} "
          f"torch {torch.__version__} threads={torch.get_num_threads()} (training scopes itself to 1 thread for "
          f"batches this small); load average (1/5/15 min) before: {load()}")
    print(f"{a.n} {a.model} memories d={a.d}{f' m={m}' if m else ''} N={a.N}, {a.steps} steps, {a.dtype}")
    train_one(configs[0], rates[0], MemoryTrainConfig(max_steps=5, dtype=a.dtype))  # warm-up (allocator, kernels)
    ratios, cpu_ratios = [], []  # wall-clock and CPU-time (this process) speed-ups
    for r in range(a.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        batch = train_batch(configs, rates, train)
        t_batch, c_batch = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        singles = [train_one(c, lr, train) for c, lr in zip(configs, rates)]
        t_single, c_single = time.perf_counter() - t0, time.process_time() - c0
        work = sum(int(s.loss.shape[0]) - 1 for s in singles)  # model-steps actually taken
        diff = max(float(np.max(np.abs(batch.loss[: s.loss.shape[0], b] - s.loss[:, 0])))
                   for b, s in enumerate(singles))
        ratios.append(t_single / t_batch)
        cpu_ratios.append(c_single / c_batch)
        print(f"repeat {r}: one at a time {work / t_single:8.0f} model-steps/s ({t_single:.2f} s), batched "
              f"{work / t_batch:8.0f} model-steps/s ({t_batch:.2f} s), speed-up {ratios[-1]:.1f}x (CPU time "
              f"{cpu_ratios[-1]:.1f}x); stopped early "
              f"{int(batch.success.sum())}; max |loss batched - loss single| = {diff:.2e}")
    print(f"median speed-up {statistics.median(ratios):.1f}x wall-clock (min {min(ratios):.1f}x, max "
          f"{max(ratios):.1f}x), {statistics.median(cpu_ratios):.1f}x CPU time, over {a.repeats} repeats; load "
          f"average after: {load()}")


if __name__ == "__main__":
    main()
