"""Reports of one training run (dynamics.train): the summary written to results.json and the history columns.

Time is in steps; for model 1 the phases are also given in flow time (step k is flow time k*lr).
"""
from __future__ import annotations

from common.cli import describe_device
from dynamics.trainer import HISTORY_COLUMNS

from .confirm import confirmation_report
from .phases import detect_phases


def summarize_training(result, pairing=None) -> dict:
    """results.json content of a run: config, device, theory levels, throughput, phases, final metrics.

    result: a TrainResult; pairing: ``flow_gap(result)`` or None. Model 1 adds the phases in flow time
    (and with a pairing ``flow_gap`` and where it is reached); model 2 adds the confirmation report.
    """
    c, h, task = result.config, result.history, result.task
    th = dict(log_A=task.log_A, H_A_given_R=task.H_A_given_R)
    ph = detect_phases(h["step"], h["loss"], h["relation_loss"], h["subject_loss"], h["hallucination_gap"],
                       log_A=th["log_A"], H_A_given_R=th["H_A_given_R"], eps_conv=c.eps_conv).to_dict()
    out = dict(config=c.to_dict(), device=describe_device(result.device), theory=th,
               throughput=dict(sequences_per_second=result.sequences_per_second,
                               steps_per_second=result.steps_per_second, train_seconds=result.train_seconds),
               phases=dict(steps=ph),
               final={k: float(h[k][-1]) for k in ("loss", "relation_loss", "subject_loss", "accuracy",
                                                   "hallucination_gap")})
    if c.model == "linear":  # step k is flow time k*lr
        ft = {k: (v * c.lr if isinstance(v, float) and k in ("t1", "t2", "t3") else v)
              for k, v in ph.items() if k != "plateau"}
        ft["plateau"] = None if ph["plateau"] is None else dict(ph["plateau"], t=ph["plateau"]["t"] * c.lr)
        out["phases"]["flow_time"] = ft
    if pairing is not None:
        out["flow_gap"] = pairing["flow_gap"]
        out["flow_gap_at"] = dict(step=pairing["at_step"], flow_time=pairing["at_flow_time"])
    if c.model == "softmax":
        out["confirmation"] = confirmation_report(h, log_A=th["log_A"], H_A_given_R=th["H_A_given_R"],
                                                  eps_conv=c.eps_conv)
    return out


def history_columns(result, pairing=None) -> dict:
    """history.csv columns, name -> (n_eval,) array: HISTORY_COLUMNS, [flow_time], [flow_loss,
    flow_relation_loss, flow_subject_loss] (the exact flow at the same flow times, with a pairing)."""
    cols = {k: result.history[k] for k in HISTORY_COLUMNS}
    if "flow_time" in result.history:
        cols["flow_time"] = result.history["flow_time"]
    if pairing is not None:
        for k in ("loss", "relation_loss", "subject_loss"):
            cols[f"flow_{k}"] = pairing["flow"][k]
    return cols
