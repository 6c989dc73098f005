"""bench/capacity_fits.py --only linear-fixed: linear memories with a fixed number of outputs M (SPEC §7), the
docs' evidence that with ln M constant the capacity grows as d·min(d, M). The script's capacities equal the
library's search run here with the same settings, and its fits are least squares over exactly those points on
d² and on d·min(d, M), computed here with numpy."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT

BENCH = os.path.join(ROOT, "bench", "capacity_fits.py")


@pytest.mark.slow  # one subprocess search of 5 sizes, about 10 s
def test_fixed_target_runs_equal_the_library_search_and_fit_on_d_min_dM(tmp_path):
    from analysis.capacity.sweep import CapacitySettings, run_sweep

    spec = {4: (6, 8, 11), 2: (4, 6)}
    subprocess.run([sys.executable, BENCH, "--only", "linear-fixed", "--linear-fixed", "4:6,8,11;2:4,6", "--seeds",
                    "0", "1", "--linear-steps", "64", "--rtol", "0.2", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=300)
    with open(tmp_path / "fits.json") as f:
        runs = {r["label"]: r for r in json.load(f)["runs"]}
    assert set(runs) == {"linear fixed M=4", "linear fixed M=2"}
    for M, ds in spec.items():
        r = runs[f"linear fixed M={M}"]
        direct = run_sweep(CapacitySettings(model="linear", ds=ds, target="fixed", M=M, seeds=(0, 1), lrs=(1.0,),
                                            max_steps=64, rtol=0.2, with_construction=False))
        assert [z["capacity"] for z in r["sizes"]] == [list(x.capacity) for x in direct.results]
        inside = [(z["d"], c) for z in r["sizes"] for i, c in enumerate(z["capacity"])
                  if not (z["below"][i] or z["above"][i])]
        d = np.array([x for x, _ in inside], dtype=float)
        c = np.array([x for _, x in inside], dtype=float)
        for key, x in (("fit_vs_d2", d * d), ("fit_vs_d_min_dM", d * np.minimum(d, M))):
            if len(set(x)) < 2 or len(x) < 3:
                assert r[key] is None
                continue
            slope = np.polyfit(np.log(x), np.log(c), 1)[0]
            assert r[key]["slope"] == pytest.approx(slope, rel=1e-10)
        assert r["NlogM_over_d_min_dM"] == pytest.approx(np.mean(c * np.log(M) / (d * np.minimum(d, M))), rel=1e-12)
    # M = 2 < d: only 2·d entries of UᵀW matter, so the second fit's abscissa is 2d, not d²
    assert "fit_NlogN_vs_d2" not in runs["linear fixed M=2"]
