"""bench/capacity_fits.py --merge: capacities measured in separate runs of disjoint seeds, merged, equal one run of
all the seeds (each seed's search does not depend on the other seeds of its batch), and the merged fit is that
run's fit. This is how the docs' 5-seed MLP table joins seeds 0-2 and 3-4."""
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

BENCH = os.path.join(ROOT, "bench", "capacity_fits.py")
TINY = ["--only", "linear", "--linear-d", "3", "4", "6", "--linear-steps", "64", "--rtol", "0.2"]


def bench(*args):
    subprocess.run([sys.executable, BENCH, *args], check=True, capture_output=True, text=True, timeout=300)


def runs(path):
    with open(path) as f:
        return json.load(f)["runs"]


@pytest.mark.slow  # four subprocess searches, about 20 s
def test_merged_seeds_equal_one_run_of_all_seeds(tmp_path):
    bench(*TINY, "--seeds", "0", "--out", str(tmp_path / "a"))
    bench(*TINY, "--seeds", "1", "2", "--out", str(tmp_path / "b"))
    bench(*TINY, "--seeds", "0", "1", "2", "--out", str(tmp_path / "all"))
    bench("--merge", str(tmp_path / "a" / "fits.json"), str(tmp_path / "b" / "fits.json"), "--out", str(tmp_path / "m"))
    (merged,), (joint,) = runs(tmp_path / "m" / "fits.json"), runs(tmp_path / "all" / "fits.json")
    assert merged["settings"]["seeds"] == [0, 1, 2]
    for zm, zj in zip(merged["sizes"], joint["sizes"], strict=True):
        assert zm["capacity"] == zj["capacity"] and zm["probes"] == zj["probes"]
    for k in ("fit_vs_d2", "fit_NlogN_vs_d2"):
        assert merged[k]["slope"] == pytest.approx(joint[k]["slope"], rel=1e-12)
        assert merged[k]["ci"] == pytest.approx(joint[k]["ci"], rel=1e-12)


@pytest.mark.slow
def test_merging_a_seed_twice_is_refused(tmp_path):
    bench(*TINY, "--seeds", "0", "--out", str(tmp_path / "a"))
    path = str(tmp_path / "a" / "fits.json")
    proc = subprocess.run([sys.executable, BENCH, "--merge", path, path, "--out", str(tmp_path / "m")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "repeats seeds" in proc.stderr
    assert not (tmp_path / "m").exists()
