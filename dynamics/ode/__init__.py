"""The ODE solver stack: steppers (DOPRI5, ROCK4, torchdiffeq and scipy adapters), tolerances and the
engine that integrates with events, dense output and replay."""
