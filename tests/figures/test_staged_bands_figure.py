"""figures.staged_bands draws each stage's mean loss and min-max band per evaluation set at the right place: one
axis with each stage shifted to its (common) start when every seed starts every stage together, one panel per
stage on the time since the stage's start when the seeds' starts differ.

Reference: the plain input arrays themselves (the drawn line's data must be exactly them, shifted by the start)."""
import matplotlib.pyplot as plt
import numpy as np

from figures.staged_bands import plot_staged_bands


def stats(lo, hi):
    return dict(n=3, mean=(lo + hi) / 2, std=0.0 if lo == hi else 1.0, min=lo, max=hi)


def data(start2):
    t = np.array([0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 3.0])
    stage = np.array([0, 0, 0, 1, 1, 1, 1], dtype=float)
    mean = np.array([3.0, 2.0, 1.0, 2.5, 2.0, 1.5, 1.0])
    return dict(curves=dict(t=t, stage=stage, all_mean=mean, all_min=mean - 0.1, all_max=mean + 0.1,
                            train_mean=mean * 0.5, train_min=mean * 0.4, train_max=mean * 0.6),
                sets=["train", "all"], time_unit="steps", seeds=[0, 1, 2], label="all runs", log_A=3.4,
                model="softmax", optimizer="adam",
                stages=[dict(name="a", index=0, start=stats(0.0, 0.0), length=stats(*start2), n_cut=0, seeds_run=3),
                        dict(name="b", index=1, start=stats(*start2), length=stats(3.0, 3.0), n_cut=1,
                             seeds_run=3)])


def lines(ax, gid):
    return [ln for ln in ax.get_lines() if ln.get_gid() == gid]


def test_aligned_stages_share_one_axis_at_their_start():
    fig = plot_staged_bands(data((2.0, 2.0)))
    axes = [a for a in fig.axes if a.get_lines()]
    assert len(axes) == 1
    drawn = lines(axes[0], "mean:all")
    assert len(drawn) == 2
    assert np.array_equal(drawn[0].get_xdata(), [0.0, 1.0, 2.0]) and np.array_equal(drawn[0].get_ydata(), [3, 2, 1])
    assert np.array_equal(drawn[1].get_xdata(), [2.0, 3.0, 4.0, 5.0])  # stage b shifted to its start, 2
    assert np.array_equal(drawn[1].get_ydata(), [2.5, 2.0, 1.5, 1.0])
    assert [ln.get_xdata()[0] for ln in lines(axes[0], "stage_boundary")] == [2.0]
    plt.close(fig)


def test_stages_that_start_apart_get_one_panel_each():
    fig = plot_staged_bands(data((1.0, 3.0)))
    axes = [a for a in fig.axes if a.get_lines()]
    assert len(axes) == 2
    b = lines(axes[1], "mean:all")
    assert len(b) == 1 and np.array_equal(b[0].get_xdata(), [0.0, 1.0, 2.0, 3.0])  # time since the stage's start
    assert "cut 1/3" in axes[1].get_title() and "2 ± 1" in axes[1].get_title()
    assert not lines(axes[0], "stage_boundary") and not lines(axes[1], "stage_boundary")
    plt.close(fig)
