"""Analysis: phase detection on any loss curve (and, later, the symbolic reduction)."""
from .phases import Phases, Plateau, detect_phases, first_crossing, hermite_crossing, plateau_index, thresholds

__all__ = ["Phases", "Plateau", "detect_phases", "first_crossing", "hermite_crossing", "plateau_index",
           "thresholds"]
