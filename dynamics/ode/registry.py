"""The registry of methods: (backend, method) -> stepper class, and :func:`make_stepper`.

The names come from :mod:`dynamics.choices` (plain tuples, importable without torch, that the command lines
offer); this module binds each to the class that implements it. tests/dynamics/ode/test_registry.py checks
that the two agree, so a method named in one place and not the other fails a test rather than a run.

- ``native``: the stage-major DOPRI5 of :mod:`dynamics.ode.dopri5` (the default; fastest here), or ``rock4``,
  the stabilized explicit ROCK4 of :mod:`dynamics.ode.rock4` (for stiff plateaus of large states);
- ``torchdiffeq``: torchdiffeq's adaptive Runge-Kutta methods (:mod:`dynamics.ode.adapters`);
- ``scipy``: scipy.integrate's OdeSolver classes (:mod:`dynamics.ode.adapters`).
"""
from __future__ import annotations

import torch

from common.errors import ConfigError

from dynamics.choices import BACKENDS, METHODS, SCIPY_METHODS, TORCHDIFFEQ_METHODS
from dynamics.ode.adapters import ScipyStepper, TorchdiffeqStepper
from dynamics.ode.base import Stepper
from dynamics.ode.dopri5 import Dopri5Stepper
from dynamics.ode.rock4 import Rock4Stepper

REGISTRY: dict[tuple[str, str], type] = {}


def register(backend: str, method: str, cls: type) -> None:
    """Bind (backend, method) to a :class:`dynamics.ode.base.Stepper` subclass (its ``build`` makes the stepper).
    ConfigError if the name is not in dynamics.choices.METHODS or is taken by another class."""
    if not (isinstance(cls, type) and issubclass(cls, Stepper)):
        raise ConfigError(f"register({backend!r}, {method!r}, {cls!r}): pass a subclass of dynamics.ode.base.Stepper")
    if method not in METHODS.get(backend, ()):
        raise ConfigError(f"register({backend!r}, {method!r}): add the name to dynamics.choices.METHODS first "
                          "(the command lines offer those names)")
    if REGISTRY.get((backend, method), cls) is not cls:
        raise ConfigError(f"({backend!r}, {method!r}) is already registered to {REGISTRY[(backend, method)].__name__}")
    REGISTRY[(backend, method)] = cls


register("native", "dopri5", Dopri5Stepper)
register("native", "rock4", Rock4Stepper)
for _m in TORCHDIFFEQ_METHODS:
    register("torchdiffeq", _m, TorchdiffeqStepper)
for _m in SCIPY_METHODS:
    register("scipy", _m, ScipyStepper)


def check_method(backend: str, method: str) -> None:
    """ConfigError unless ``method`` belongs to ``backend``."""
    if backend not in METHODS:
        raise ConfigError(f"backend = {backend!r} is unknown; choose one of: {', '.join(BACKENDS)}")
    if method not in METHODS[backend]:
        raise ConfigError(f"method = {method!r} is not available with backend {backend!r}; "
                          f"choose one of: {', '.join(METHODS[backend])}")


def stepper_class(backend: str, method: str) -> type:
    """The Stepper subclass registered for (backend, method); ConfigError naming the choices otherwise."""
    check_method(backend, method)
    return REGISTRY[(backend, method)]


def make_stepper(backend: str, method: str, f, t0: float, y0: torch.Tensor, *, rtol: float, atol: float,
                 t_bound: float, atol_floor=None) -> Stepper:
    """A stepper of ``backend``/``method`` for y' = f(y) from (t0, y0).

    f(y, out=None) -> (P,) tensor (the native stepper writes into ``out``). atol_floor: None or a callable
    y -> (P,) atol (e.g. :class:`dynamics.ode.controller.RowAtol`) that the stepper's controller applies
    after accepted steps 1, 9, 17, ... (native backend only). ConfigError on a bad combination or tolerance.
    """
    return stepper_class(backend, method).build(f, method, t0, y0, rtol=rtol, atol=atol, t_bound=t_bound,
                                                atol_floor=atol_floor)
