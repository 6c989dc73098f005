"""Benchmark of the exact flow: whole CLI process and integration time, or the monitor's share of a run.

    python bench/flow.py                      # S16/R4/D8: 5 repeats of the whole process
    python bench/flow.py --S 1024 --R 32 --D 32 --repeats 1
    python bench/flow.py --S 256 --R 8 --D 8 --monitor --extra "--rtol 1e-7"   # monitor fraction, in-process

--monitor runs run_flow in this process with timers around the monitor (FlowMonitor.row: the saved rows;
FlowMonitor.loss: the loss at every step's end for the events; the interpolants' evaluations: the states at the
saved times and in event searches) and around the right-hand side, and prints the
monitor's share of the integration time and its cost in right-hand-side equivalents (monitor CPU time / mean CPU
time of one right-hand side in the same run: on a shared machine a ratio of times measured side by side is far
steadier than seconds).

Prints one line per repeat and the median; writes nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--S", type=int, default=16, help="number of subjects (default 16)")
    p.add_argument("--R", type=int, default=4, help="number of relations (default 4)")
    p.add_argument("--D", type=int, default=8, help="answers per relation (default 8)")
    p.add_argument("--repeats", type=int, default=5,
                   help="runs of the whole process; the median is reported (default 5)")
    p.add_argument("--extra", default="", help="extra flags for dynamics.run, quoted")
    p.add_argument("--monitor", action="store_true",
                   help="in-process: the monitor's share of the integration (rows and step-end losses)")
    a = p.parse_args(argv)
    if a.monitor:
        return monitor_share(a)
    walls, integ = [], []
    for i in range(a.repeats):
        with tempfile.TemporaryDirectory() as d:
            cmd = [sys.executable, "-m", "dynamics.run", "--S", str(a.S), "--R", str(a.R), "--D", str(a.D),
                   "--out", os.path.join(d, "run"), "--quiet", *a.extra.split()]
            t0 = time.perf_counter()
            subprocess.run(cmd, cwd=ROOT, check=True)
            wall = time.perf_counter() - t0
            res = json.load(open(os.path.join(d, "run", "results.json")))
        walls.append(wall)
        integ.append(res["integration_seconds"])
        s = res["solver"]
        print(f"repeat {i}: process {wall:.2f} s, integration {res['integration_seconds']:.3f} s, "
              f"run_flow {res['wall_seconds']:.3f} s, {s['n_steps']} steps, {s['nfe']} RHS evaluations, "
              f"t3={res['phases']['t3']}")
    print(f"median over {a.repeats}: process {statistics.median(walls):.2f} s, "
          f"integration {statistics.median(integ):.3f} s  (cpus: {os.cpu_count()})")


def monitor_share(a):
    sys.path.insert(0, ROOT)
    import dynamics.flow.solve as F
    import models.population as MP
    from dynamics.run import build_parser, config_from_args

    import dynamics.ode.dopri5 as DP
    import dynamics.ode.rock4 as RK

    acc = dict(row=[0.0, 0.0, 0], loss=[0.0, 0.0, 0], interp=[0.0, 0.0, 0], rhs=[0.0, 0.0, 0])

    def timed(name, fn):
        def wrapper(*args, **kw):
            w0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kw)
            finally:
                rec = acc[name]
                rec[0] += time.perf_counter() - w0
                rec[1] += time.process_time() - c0
                rec[2] += 1
        return wrapper

    F.FlowMonitor.row = timed("row", F.FlowMonitor.row)
    F.FlowMonitor.loss = timed("loss", F.FlowMonitor.loss)
    MP.PopulationObjective.flow_rhs = timed("rhs", MP.PopulationObjective.flow_rhs)
    # states at saved times and at event searches come from the step's interpolant: monitor work too
    DP.Dopri5Interp.__call__ = timed("interp", DP.Dopri5Interp.__call__)
    RK.HermiteInterp.__call__ = timed("interp", RK.HermiteInterp.__call__)
    monitors = []
    init = F.FlowMonitor.__init__

    def keep(self, *args, **kw):
        init(self, *args, **kw)
        monitors.append(self)

    F.FlowMonitor.__init__ = keep
    args = ["--S", str(a.S), "--R", str(a.R), "--D", str(a.D), *a.extra.split()]
    config = config_from_args(build_parser().parse_args(args))
    for i in range(a.repeats):
        for rec in acc.values():
            rec[:] = [0.0, 0.0, 0]
        c0 = time.process_time()
        run = F.run_flow(config, progress=False)
        cpu = time.process_time() - c0
        s, integ = run.solver, run.integration_seconds
        rhs_cpu = acc["rhs"][1] / max(1, acc["rhs"][2])
        mon_w = acc["row"][0] + acc["loss"][0] + acc["interp"][0]
        mon_c = acc["row"][1] + acc["loss"][1] + acc["interp"][1]
        reused = monitors[-1].reused if monitors else 0
        print(f"repeat {i}: {a.S}/{a.R}/{a.D} {s['method']} {s['n_steps']} steps, {s['nfe']} RHS evaluations "
              f"({acc['rhs'][2]} timed), {acc['row'][2]} rows, {acc['loss'][2]} step-end losses ({reused} reused "
              f"from the solver's last RHS); integration {integ:.2f} s wall, {cpu:.2f} s CPU")
        print(f"  monitor: {mon_w:.2f} s wall = {100 * mon_w / integ:.1f} % of the integration "
              f"(rows {acc['row'][0]:.2f} s, losses {acc['loss'][0]:.2f} s, {acc['interp'][2]} interpolated states "
              f"{acc['interp'][0]:.2f} s); CPU {mon_c:.2f} s = "
              f"{100 * mon_c / cpu:.1f} %; in RHS equivalents: rows {acc['row'][1] / rhs_cpu:.0f} "
              f"({acc['row'][1] / max(1, acc['row'][2]) / rhs_cpu:.2f} per row), losses "
              f"{acc['loss'][1] / rhs_cpu:.0f}, interpolation {acc['interp'][1] / rhs_cpu:.0f}, RHS {acc['rhs'][2]}: "
              f"monitor share "
              f"{100 * mon_c / rhs_cpu / (acc['rhs'][2] + mon_c / rhs_cpu):.1f} % of RHS + monitor work")


if __name__ == "__main__":
    main()
