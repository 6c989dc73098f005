"""The names the flow and the trainers accept (backends, methods, initializations, models, optimizers).

Plain tuples with no heavy imports, so the command-line programs can offer them as ``choices`` before
torch is loaded; :mod:`dynamics.ode.registry`, :mod:`dynamics.flow.config` and :mod:`dynamics.training.config` use
these same objects.
"""
TORCHDIFFEQ_METHODS = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")
SCIPY_METHODS = ("DOP853", "RK45", "RK23", "LSODA", "BDF", "Radau")
IMPLICIT = ("LSODA", "BDF", "Radau")  # may form a dense P x P Jacobian by finite differences
NATIVE_METHODS = ("dopri5", "rock4")  # rock4: stabilized explicit (dynamics.ode.rock4), for stiff plateaus
DEFAULT_METHOD = {"native": "dopri5", "torchdiffeq": "dopri5", "scipy": "DOP853"}
METHODS = {"native": NATIVE_METHODS, "torchdiffeq": TORCHDIFFEQ_METHODS, "scipy": SCIPY_METHODS}
BACKENDS = tuple(DEFAULT_METHOD)
INITS = ("balanced", "uniform", "file")  # the first two are models.linear.INIT_KINDS (tested)
MODELS = ("linear", "softmax", "transformer")
OPTIMIZERS = ("gd", "sgd", "adam")
