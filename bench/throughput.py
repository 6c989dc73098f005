"""Throughput of the sampled trainers: sequences/s and steps/s of one full training step
(sampling on the device + forward + backward + update), on the CPU and on CUDA when present.

    python bench/throughput.py --out runs/bench_throughput.json [--threads 2] [--large-batch 262144]

Cases: model 1 SGD at batch 1024 (CPU goal >= 1e6 sequences/s); model 2 SGD and Adam at
batch 1024 (H100 goal >= 5,000 steps/s) and at a large batch (H100 goal >= 5e7 sequences/s).
On CUDA the step is a replayed CUDA graph (and, for comparison, eager). Results go to a JSON file.
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from common.cli import ArgumentParser, add_overwrite, describe_device, guarded  # noqa: E402
from common.io import check_out, output_file  # noqa: E402
from dynamics.training import SampledTrainer, TrainConfig  # noqa: E402
from models.task import TaskConfig  # noqa: E402


def time_steps(trainer: SampledTrainer, seconds: float) -> tuple[float, int]:
    """Steps per second of ``trainer.step`` measured for about ``seconds`` (after warm-up)."""
    cuda = trainer.device.type == "cuda"
    for _ in range(5):
        trainer.step()
    if cuda:
        torch.cuda.synchronize()
    n, chunk = 0, 10
    t0 = time.perf_counter()
    while True:
        for _ in range(chunk):
            trainer.step()
        n += chunk
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n / dt, n
        chunk = min(chunk * 2, 10000)


def case(model, optimizer, batch, device, graph, seconds, lr=0.1, d=64, manual_grad=True):
    c = TrainConfig(task=TaskConfig(), model=model, optimizer=optimizer, lr=lr if optimizer != "adam" else 1e-3,
                    batch=batch, steps=10, init="uniform", init_scale=1e-5 if model == "linear" else 1e-3, d=d,
                    device=device, cuda_graph=graph, manual_grad=manual_grad)
    tr = SampledTrainer(c)
    if graph and tr.device.type == "cuda":
        tr.capture()
    sps, n = time_steps(tr, seconds)
    return dict(model=model, optimizer=optimizer, batch=batch, device=describe_device(tr.device),
                cuda_graph=bool(graph and tr.device.type == "cuda"),
                gradient="hand-written" if (manual_grad or model == "linear") else "autograd", steps_per_second=sps,
                sequences_per_second=sps * batch, timed_steps=n, threads=torch.get_num_threads())


@guarded
def main(argv=None) -> int:
    p = ArgumentParser(prog="python bench/throughput.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/bench_throughput.json",
                   help="JSON file for the results, written whole at the end (default runs/bench_throughput.json); "
                        "an existing file is refused unless --overwrite")
    add_overwrite(p)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--seconds", type=float, default=3.0, help="time per case (default 3)")
    p.add_argument("--large-batch", type=int, nargs="+", default=[65536, 262144, 1048576],
                   help="large batches for model 2 on CUDA (default 65536 262144 1048576)")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU cases")
    a = p.parse_args(argv)
    check_out(a.out, overwrite=a.overwrite, kind="file")  # before any measurement
    if a.threads:  # SampledTrainer.step() itself leaves the thread count alone (only .run() sets it)
        torch.set_num_threads(a.threads)
    rows = []

    def add(thunk):
        try:
            r = thunk()
        except Exception as exc:  # one failing case must not hide the others' numbers
            print(f"case failed: {type(exc).__name__}: {str(exc).splitlines()[0]}", flush=True)
            rows.append(dict(error=f"{type(exc).__name__}: {exc}"))
            return
        rows.append(r)
        print(f"{r['model']:8s} {r['optimizer']:5s} batch {r['batch']:>8d} {r['device']:40s} graph={r['cuda_graph']!s:5s}"
              f" {r['gradient']:12s} {r['steps_per_second']:10.1f} steps/s {r['sequences_per_second']:12.4g} seq/s", flush=True)

    if not a.no_cpu:
        add(lambda: case("linear", "sgd", 1024, "cpu", False, a.seconds))
        add(lambda: case("softmax", "sgd", 1024, "cpu", False, a.seconds))
        add(lambda: case("softmax", "sgd", 1024, "cpu", False, a.seconds, manual_grad=False))
        add(lambda: case("softmax", "adam", 1024, "cpu", False, a.seconds))
    if torch.cuda.is_available():
        for opt in ("sgd", "adam"):
            add(lambda: case("softmax", opt, 1024, "cuda", True, a.seconds))
            add(lambda: case("softmax", opt, 1024, "cuda", True, a.seconds, manual_grad=False))
            add(lambda: case("softmax", opt, 1024, "cuda", False, a.seconds))
        for b in a.large_batch:
            add(lambda: case("softmax", "sgd", b, "cuda", True, a.seconds))
            add(lambda: case("softmax", "sgd", b, "cuda", True, a.seconds, manual_grad=False))
        add(lambda: case("linear", "sgd", 1024, "cuda", True, a.seconds))
        add(lambda: case("linear", "sgd", 1024, "cuda", False, a.seconds))
        add(lambda: case("linear", "sgd", a.large_batch[-1], "cuda", True, a.seconds))
    else:
        print("no CUDA GPU found: CPU cases only")
    with output_file(a.out, overwrite=a.overwrite) as f:
        json.dump(dict(torch=torch.__version__, rows=rows), f, indent=2)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
