"""Status: every member has a message, the saved text is the plain string it always was, and the engine's
outcomes map to the flow's in one place."""
import csv
import io
import json
import math

import pytest
import torch

from dynamics.ode import Event, Status, integrate, make_stepper
from dynamics.ode.status import ENGINE_STATUSES, FLOW_STATUSES, flow_status

SAVED_TEXT = {"T_END": "t_end", "STOPPED": "stopped", "MAX_STEPS": "max_steps", "FAILED": "failed",
              "CONVERGED": "converged", "T_MAX": "t_max"}


def test_every_member_has_a_message_and_its_saved_text():
    assert {m.name: m.value for m in Status} == SAVED_TEXT
    for m in Status:
        assert isinstance(m.message, str) and len(m.message) > 20
        assert m == m.value and str(m) == m.value and f"{m}" == m.value and "%s" % m == m.value
        assert json.dumps({"status": m}) == json.dumps({"status": m.value})
        buf = io.StringIO()
        csv.writer(buf).writerow([m, 1])
        assert buf.getvalue() == f"{m.value},1\r\n"
        assert Status(m.value) is m


def test_flow_status_mapping():
    assert [flow_status(s) for s in ENGINE_STATUSES] == [Status.T_MAX, Status.CONVERGED, Status.MAX_STEPS,
                                                         Status.FAILED]
    assert set(map(flow_status, ENGINE_STATUSES)) == set(FLOW_STATUSES)
    assert flow_status("stopped") is Status.CONVERGED
    with pytest.raises(ValueError, match="not an engine status"):
        flow_status("converged")


def _decay(y, out=None):
    return torch.mul(y, -1.0, out=out) if out is not None else -y


def _stepper(t_end=5.0):
    return make_stepper("native", "dopri5", _decay, 0.0, torch.tensor([1.0]), rtol=1e-10, atol=1e-13, t_bound=t_end)


def test_the_engine_reports_each_outcome():
    sol = integrate(_stepper(), 5.0)
    assert sol.status is Status.T_END and sol.t_final == 5.0
    sol = integrate(_stepper(), 5.0, stop=Event("y", lambda t, y: float(y[0]), (0.5,)))
    assert sol.status is Status.STOPPED and sol.stop_time == pytest.approx(math.log(2.0), rel=1e-9)
    sol = integrate(_stepper(), 5.0, max_steps=3)
    assert sol.status is Status.MAX_STEPS and "3 steps" in sol.message
    blow = make_stepper("native", "dopri5", lambda y, out=None: torch.mul(y, y, out=out), 0.0, torch.tensor([1.0]),
                        rtol=1e-8, atol=1e-10, t_bound=2.0)
    sol = integrate(blow, 2.0)  # y' = y^2 blows up at t = 1
    assert sol.status is Status.FAILED and sol.t_final == pytest.approx(1.0, abs=1e-3)
