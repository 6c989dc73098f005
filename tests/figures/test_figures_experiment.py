"""Figures of a multi-stage experiment: the content of each panel (one curve per non-empty set, equal to the
input columns), stage boundaries, legends outside the data area, the sweep figure and atomic saving."""
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from figures.experiment import experiment_figure, save_experiment_figures, set_names, sweep_figure  # noqa: E402

METRICS = ("loss", "relation_loss", "subject_loss", "hallucination_gap", "p_true", "accuracy", "excess")
SETS = ("all", "train", "seen", "unseen", "old", "new")
LOG_A = math.log(8)
T_SWITCH = 40.0


def synthetic(t1=np.geomspace(1e-2, T_SWITCH, 30), t2=np.geomspace(T_SWITCH, 400.0, 25)):
    """Two stages (pretrain on old subjects, finetune on new ones); ``unseen`` is empty (NaN) in stage 2,
    ``empty`` in both. Every column distinct so a curve can be matched to its input."""
    t = np.concatenate([[0.0], t1, t2])  # the boundary time twice: last row of stage 1, first of stage 2
    stage = np.concatenate([np.zeros(1 + t1.size), np.ones(t2.size)])
    cols = {"stage": stage, "t": t}
    for k, name in enumerate(SETS + ("empty",)):
        for j, m in enumerate(METRICS):
            col = (LOG_A * np.exp(-t / (50.0 * (k + 1))) + 0.01 * j) if m != "p_true" else \
                1.0 - np.exp(-t / (30.0 * (k + 1)))
            col = col.copy()
            if name == "unseen":
                col[stage == 1] = np.nan
            if name == "empty":
                col[:] = np.nan
            cols[f"{name}_{m}"] = col
    cols["invariant_drift"] = 1e-12 * t
    cols["column_sums_drift"] = 1e-13 * t
    cols["train_dloss_dt"] = -np.exp(-t)
    stages = [dict(name="pretrain", t_start=0.0, t_end=T_SWITCH, reason="loss"),
              dict(name="finetune", t_start=T_SWITCH, t_end=400.0, reason="time")]
    entropies = [{"all": math.log(2), "train": math.log(2), "unseen": math.log(2)},
                 {"all": math.log(2), "train": math.log(2), "unseen": math.nan}]
    return cols, stages, entropies


def set_lines(ax) -> dict:
    return {line.get_gid()[4:]: line for line in ax.get_lines() if (line.get_gid() or "").startswith("set:")}


@pytest.fixture
def data():
    return synthetic()


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_set_names_in_column_order(data):
    cols, _, _ = data
    assert set_names(cols) == list(SETS) + ["empty"]


def test_each_panel_draws_one_curve_per_nonempty_set_equal_to_the_input(data):
    cols, stages, ent = data
    fig = experiment_figure(cols, stages, log_A=LOG_A, entropies=ent)
    ax1, ax2, ax3 = fig.axes
    for ax, metric in ((ax1, "loss"), (ax2, "p_true")):
        lines = set_lines(ax)
        assert list(lines) == list(SETS)  # "empty" (all NaN) is not drawn; "unseen" (NaN in stage 2 only) is
        for name, line in lines.items():
            np.testing.assert_array_equal(line.get_xdata(), cols["t"])
            np.testing.assert_array_equal(line.get_ydata(), cols[f"{name}_{metric}"])  # NaNs in place
    # panel 3: the unseen set's excess, since it has values
    lines3 = set_lines(ax3)
    assert list(lines3) == ["unseen"]
    np.testing.assert_array_equal(lines3["unseen"].get_ydata(), cols["unseen_excess"])
    # distinct colours
    colors = [matplotlib.colors.to_rgba(line.get_color()) for line in set_lines(ax1).values()]
    assert len(set(colors)) == len(colors)
    # the same colour for a set in every panel
    for name, line in set_lines(ax2).items():
        assert line.get_color() == set_lines(ax1)[name].get_color()


def test_hallucination_gap_panel_when_unseen_is_empty(data):
    cols, stages, ent = data
    cols = dict(cols, unseen_excess=np.full_like(cols["t"], np.nan))
    fig = experiment_figure(cols, stages, log_A=LOG_A, entropies=ent)
    lines = set_lines(fig.axes[2])
    assert list(lines) == list(SETS)
    for name, line in lines.items():
        np.testing.assert_array_equal(line.get_ydata(), cols[f"{name}_hallucination_gap"])
    assert "hallucination gap" in fig.axes[2].get_ylabel()


def test_sets_argument_selects_and_orders(data):
    cols, stages, ent = data
    fig = experiment_figure(cols, stages, log_A=LOG_A, entropies=ent, sets=["new", "old", "empty"])
    assert list(set_lines(fig.axes[0])) == ["new", "old"]
    with pytest.raises(ValueError, match="nope"):
        experiment_figure(cols, stages, log_A=LOG_A, sets=["all", "nope"])


def test_stage_boundaries_reference_levels_and_labels(data):
    cols, stages, ent = data
    fig = experiment_figure(cols, stages, log_A=LOG_A, entropies=ent)
    for ax in fig.axes:
        xs = [line.get_xdata()[0] for line in ax.get_lines() if line.get_gid() == "stage_boundary"]
        assert xs == [T_SWITCH]
    ax1 = fig.axes[0]
    levels = sorted(line.get_ydata()[0] for line in ax1.get_lines() if line.get_gid() == "reference")
    assert levels == pytest.approx([math.log(2), LOG_A])
    for line in ax1.get_lines():
        if line.get_gid() == "reference":
            assert line.get_linestyle() != "-"  # dashed
    names = [t.get_text().strip() for t in ax1.texts if t.get_gid() == "stage_label"]
    assert names == ["pretrain", "finetune"]
    assert fig.axes[-1].get_xlabel().startswith("flow time t")
    assert ax1.get_ylabel() == "loss (nats)"


def test_time_axis_scale_follows_the_data():
    cols, stages, ent = synthetic()  # 1e-2 .. 400: more than two decades
    fig = experiment_figure(cols, stages, log_A=LOG_A, entropies=ent)
    assert fig.axes[0].get_xscale() == "log"
    assert fig.axes[0].get_xlim()[0] == pytest.approx(1e-2)
    cols, stages, ent = synthetic(np.linspace(10.0, T_SWITCH, 10), np.linspace(T_SWITCH, 400.0, 10))
    fig = experiment_figure(cols, stages, log_A=LOG_A, entropies=ent)
    assert fig.axes[0].get_xscale() == "linear"


def test_legends_lie_outside_every_axes_data_area(data):
    cols, stages, ent = data
    fig = experiment_figure(cols, stages, log_A=LOG_A, entropies=ent, title="test")
    fig.canvas.draw()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends, "no legend"
    fig_box = fig.bbox
    for leg in legends:
        box = leg.get_window_extent()
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent()), "legend over an axes' data area"
        assert fig_box.x0 <= box.x0 and box.x1 <= fig_box.x1 + 1 and box.y0 >= fig_box.y0 - 1, \
            "legend cut off by the figure edge"
    set_legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert set(SETS) <= set(set_legend) and "empty" not in set_legend


def test_dataframe_input_and_stage_objects(data):
    pd = pytest.importorskip("pandas")
    cols, stages, ent = data
    fig = experiment_figure(pd.DataFrame(cols), stages, log_A=LOG_A, entropies=ent[0])
    assert list(set_lines(fig.axes[0])) == list(SETS)
    # no stages given: the boundaries come from the trajectory's stage column
    fig = experiment_figure(cols, [], log_A=LOG_A)
    xs = [line.get_xdata()[0] for line in fig.axes[0].get_lines() if line.get_gid() == "stage_boundary"]
    assert xs == [T_SWITCH]


def test_sweep_figure_one_line_per_series():
    x = np.array([0.0, 0.5, 1.0, 1.5])
    ys = {"k=0": np.array([10.0, 12.0, 20.0, np.nan]), "k=4": np.array([8.0, 9.0, 11.0, 15.0])}
    fig = sweep_figure(x, ys, xlabel="Zipf exponent", ylabel="time to eps (flow time)", logy=True)
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if (line.get_gid() or "").startswith("series:")]
    assert [line.get_label() for line in lines] == list(ys)
    for line, y in zip(lines, ys.values()):
        np.testing.assert_array_equal(line.get_xdata(), x)
        np.testing.assert_array_equal(line.get_ydata(), y)
        assert line.get_marker() not in (None, "None", "")
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "Zipf exponent"
    fig.canvas.draw()
    assert not ax.get_legend().get_window_extent().overlaps(ax.get_window_extent())
    with pytest.raises(ValueError):
        sweep_figure(x, {"bad": [1.0, 2.0]}, xlabel="x", ylabel="y")


@pytest.mark.slow
def test_save_writes_png_atomically(tmp_path, data):
    cols, stages, ent = data
    out = tmp_path / "figs"
    paths = save_experiment_figures(str(out), cols, stages, log_A=LOG_A, entropies=ent)
    assert os.path.join(str(out), "experiment.png") in paths
    for p in paths:
        assert os.path.getsize(p) > 0
    with open(os.path.join(str(out), "experiment.png"), "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in paths)  # no temporary file left
    assert not plt.get_fignums()  # the figure was closed
