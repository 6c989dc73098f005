"""Storage capacity of associative memories (SPEC §9-10): bisection search over N, scaling fit, sweeps.
Lazy, so that ``python -m analysis.capacity --help`` loads no torch."""
from common.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), {
    "ScalingFit": "fit", "scaling_fit": "fit", "Bracket": "search", "CapacityResult": "search",
    "search_capacity": "search", "CapacitySettings": "sweep", "SweepResult": "sweep", "run_sweep": "sweep"})
