"""How a solve ended: one ``str``-valued enum for the engine's outcome and the flow's, with the mapping between
them in one place (:func:`flow_status`).

The members *are* strings (``Status.CONVERGED == "converged"``; ``str()``, ``format()``, ``repr()`` and
``json.dumps`` give the bare value or its repr), so every saved file (results.json, CSV tables) keeps the text it had when statuses were plain
strings. ``Status.X.message`` is one sentence saying what the status means.

Engine outcomes (:func:`dynamics.ode.engine.integrate`): ``t_end``, ``stopped``, ``max_steps``, ``failed``.
Flow outcomes (:func:`dynamics.flow.solve.run_flow`, :func:`dynamics.flow.batched.run_flows_batched`): the
same with ``stopped`` read as ``converged`` (the stop event of a flow is its loss target) and ``t_end`` as
``t_max`` (the end time of a flow is its t_max); ``max_steps`` and ``failed`` pass through unchanged.
"""
from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """The outcome of a solve (engine) or of a flow; a ``str`` whose text is the saved value."""

    # engine outcomes
    T_END = ("t_end", "the integration reached its end time")
    STOPPED = ("stopped", "the stop event fired (its first crossing is the final time)")
    MAX_STEPS = ("max_steps", "the step budget ran out; raise max_steps or loosen rtol")
    FAILED = ("failed", "the solver could not go on (the step size collapsed or the state became non-finite); "
                        "the message says where")
    # flow outcomes (what T_END and STOPPED mean for a gradient flow)
    CONVERGED = ("converged", "the loss reached its target (checked on the final state)")
    T_MAX = ("t_max", "the flow reached t_max before its loss target; raise t_max or the loss target")

    def __new__(cls, value: str, message: str):
        member = str.__new__(cls, value)
        member._value_ = value
        member.message = message
        return member

    # the bare text everywhere (Python >= 3.11 would otherwise print "Status.CONVERGED" in f-strings)
    __str__ = str.__str__
    __format__ = str.__format__

    def __repr__(self) -> str:
        # as the text it stands for: a result's repr reads status='converged', as it did with plain strings
        return repr(self.value)


ENGINE_STATUSES = (Status.T_END, Status.STOPPED, Status.MAX_STEPS, Status.FAILED)
FLOW_STATUSES = (Status.CONVERGED, Status.T_MAX, Status.MAX_STEPS, Status.FAILED)
# the one place where an engine outcome becomes a flow outcome
_FLOW_OF_ENGINE = {Status.STOPPED: Status.CONVERGED, Status.T_END: Status.T_MAX,
                   Status.MAX_STEPS: Status.MAX_STEPS, Status.FAILED: Status.FAILED}


def flow_status(engine_status) -> Status:
    """The flow's outcome for the engine's ``engine_status`` (a Status or its text): stopped -> converged,
    t_end -> t_max, max_steps and failed unchanged. ValueError for a text that is no engine outcome."""
    try:
        return _FLOW_OF_ENGINE[Status(engine_status)]
    except (ValueError, KeyError):
        raise ValueError(f"{engine_status!r} is not an engine status; expected one of "
                         f"{', '.join(s.value for s in ENGINE_STATUSES)}") from None
