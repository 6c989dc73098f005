"""The result of a flow study: an integrated flow (full or reduced) with its phases (SPEC §3).

    res = analyze_flow(FlowConfig(task=TaskConfig(S=16, R=4, D=8)))
    res                      # config, status, phase times, solver statistics
    res.phases.t1, res.trajectory["loss"], res.to_dataframe()
    fig = res.plot(); res.save("runs/mine")   # the same files as ``python -m dynamics.run``
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from dynamics.flow.solve import run_flow
from models.task import make_task

from analysis.phases import Phases, flow_phases, thresholds

PLOT_FILES = ("loss.png", "loss.pdf", "invariant.png")


@dataclass(frozen=True)
class FlowResult:
    """Everything a flow study produced. ``trajectory`` is a dynamics.Trajectory (column -> (n,) array)."""

    config: object  # dynamics.FlowConfig
    status: str  # converged | t_max | max_steps | failed
    trajectory: dict = field(repr=False)
    phases: Phases
    theory: dict
    conservation: dict  # law name -> max drift over the run
    solver: dict = field(repr=False)
    wall_seconds: float
    integration_seconds: float
    final_state: tuple = field(repr=False)  # compressed (Wt (C, |A|), K (C,)) as numpy
    message: str = ""
    run: object = field(repr=False, default=None)  # dynamics.FlowRun of a full run (dense output), else None
    compare: dict | None = field(repr=False, default=None)  # --mode compare: full vs reduced

    @property
    def invariant_max_drift(self) -> float:
        return self.conservation["balance"]

    def __repr__(self) -> str:
        t, ph, s = self.config.task, self.phases, self.solver

        def f(x):
            return "None" if x is None else f"{x:.6g}"

        return (f"FlowResult(S={t.S}, R={t.R}, D={t.D}, facts={t.facts!r}, alpha={self.config.alpha:g}, "
                f"status={self.status!r}, t1={f(ph.t1)}, t2={f(ph.t2)}, t3={f(ph.t3)}, "
                f"plateau_loss={f(ph.plateau.loss if ph.plateau else None)}, "
                f"solver={s['backend']}/{s['method']} steps={s.get('n_steps')} nfe={s.get('nfe')})")

    def to_dataframe(self):
        """The trajectory as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(dict(self.trajectory))

    def to_dict(self) -> dict:
        """The content of results.json."""
        ph = self.phases.to_dict()
        out = dict(
            config=self.config.to_dict(),
            status=self.status,
            message=self.message,
            phases=dict(t1=ph["t1"], t2=ph["t2"], t3=ph["t3"], plateau=ph["plateau"],
                        thresholds=dict(theta1=ph["theta1"], theta2=ph["theta2"], theta3=ph["theta3"])),
            theory=self.theory,
            invariant_max_drift=self.invariant_max_drift,
            conservation_max_drift=self.conservation,
            final={k: float(v[-1]) for k, v in self.trajectory.items()},
            solver=self.solver,
            wall_seconds=self.wall_seconds,
            integration_seconds=self.integration_seconds,
        )
        if self.compare is not None:
            out["compare"] = self.compare
        return out

    def plot(self):
        """The loss figure (a matplotlib Figure): total, relation-only and subject-only losses with stages."""
        from figures.flow import plot_loss  # presentation: figures is the top layer, loaded on demand

        return plot_loss(self)

    def save(self, folder: str, *, plots: bool = True, overwrite: bool = False) -> None:
        """Write results.json, trajectory.csv and (plots) loss.png, loss.pdf, invariant.png into ``folder``.

        The folder is built complete under a temporary name and put in place as a whole
        (common.io.output_dir); an existing non-empty ``folder`` is refused unless ``overwrite``.
        """
        from common.io import output_dir, save_figure, write_csv, write_json

        with output_dir(folder, overwrite=overwrite) as d:
            write_json(os.path.join(d, "results.json"), self.to_dict())
            write_csv(os.path.join(d, "trajectory.csv"), self.trajectory)
            if plots:
                import matplotlib.pyplot as plt

                from figures.flow import plot_invariant, plot_loss  # presentation, loaded on demand

                fig = plot_loss(self)
                for name in ("loss.png", "loss.pdf"):
                    save_figure(fig, os.path.join(d, name), dpi=150)
                plt.close(fig)
                fig = plot_invariant(self)
                save_figure(fig, os.path.join(d, "invariant.png"), dpi=150)
                plt.close(fig)


def theory_of(task) -> dict:
    """The reference levels of SPEC §3: log|A|, H(A|R) and log D."""
    return dict(log_A=task.log_A, H_A_given_R=task.H_A_given_R, log_D=math.log(task.D))


def analyze_flow(config, *, progress: bool | None = None) -> FlowResult:
    """Integrate the exact flow of ``config`` (a dynamics.FlowConfig) and find its phases (SPEC §3)."""
    task = make_task(config.task)
    th = thresholds(task.log_A, task.H_A_given_R, config.eps_conv)
    run = run_flow(config, levels=th, progress=progress)
    phases = flow_phases(run, log_A=task.log_A, H_A_given_R=task.H_A_given_R, eps_conv=config.eps_conv)
    return FlowResult(config=config, status=run.status, message=run.message, trajectory=run.trajectory,
                      phases=phases, theory=theory_of(task), conservation=run.conservation, solver=run.solver,
                      wall_seconds=run.wall_seconds, integration_seconds=run.integration_seconds,
                      final_state=run.final_state, run=run)
