"""The trajectory object shared by the exact flow and the trainers."""
from __future__ import annotations

import numpy as np


class Trajectory(dict):
    """Columns name -> (n,) float64 arrays of one length; ``time`` names the time column.

    The flow's time column is ``t`` (flow time); a trainer's is ``step`` (with ``flow_time`` = step * lr for
    model 1). A plain dict otherwise, so ``traj["loss"]`` is a numpy array; ``to_dataframe()`` gives pandas.
    """

    def __init__(self, columns: dict, time: str = "t"):
        super().__init__((k, np.asarray(v, dtype=np.float64)) for k, v in columns.items())
        if time not in self:
            raise ValueError(f"trajectory has no time column {time!r}")
        lengths = {len(v) for v in self.values()}
        if len(lengths) > 1:
            raise ValueError(f"trajectory columns have different lengths: {sorted(lengths)}")
        self.time = time

    @property
    def t(self) -> np.ndarray:
        return self[self.time]

    @property
    def n_rows(self) -> int:
        return len(self[self.time])

    def row(self, i: int) -> dict:
        """Row i as column -> float."""
        return {k: float(v[i]) for k, v in self.items()}

    def to_dataframe(self):
        """A pandas DataFrame, one row per saved time."""
        import pandas as pd

        return pd.DataFrame(dict(self))

    def __repr__(self) -> str:
        return f"Trajectory({self.n_rows} rows; time {self.time!r}; columns {', '.join(self)})"
