"""What the figures show (issue item 6): every series of a sweep (a 9th and 10th alpha included), distinct and
distinguishable where series coincide, at least three labelled ticks on log axes, the t3 line inside the axis,
the plateau marked at the result's plateau, every line of invariant.png explained with t1 / t2 marked, no
"no CUDA GPU" remark in a title, model 2's stage 1 drawn at its evaluations on a linear step range, and no
legend over the data. Synthetic inputs or tiny real runs (S <= 16), Agg backend."""
import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from analysis import analyze_flow  # noqa: E402
from analysis.sweeps.phase_sweep import run_sweep  # noqa: E402
from dynamics import FlowConfig  # noqa: E402
from figures.flow import loss_axes, plot_invariant, plot_loss  # noqa: E402
from figures.paper import device_name  # noqa: E402
from figures.sequential import step_axis  # noqa: E402
from figures.sweep import MAX_SERIES, label_log_axis, plot_sweep  # noqa: E402
from models import TaskConfig  # noqa: E402

TASK = TaskConfig(S=8, R=2, D=4, T=6, N=3)
ALPHAS = np.geomspace(1e-6, 1e-2, 10)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def flow():
    return analyze_flow(FlowConfig(task=TASK, alpha=1e-3), progress=False)


# ----------------------------------------------------------------------------- helpers
def legends(fig):
    return list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]


def assert_legends_clear(fig):
    """Every legend lies inside the figure and outside every axes, or covers none of its lines' points."""
    fig.canvas.draw()
    found = legends(fig)
    assert found, "no legend"
    for leg in found:
        box = leg.get_window_extent()
        assert fig.bbox.x0 - 1 <= box.x0 and box.x1 <= fig.bbox.x1 + 1 and box.y0 >= fig.bbox.y0 - 1, \
            "legend cut off by the figure edge"
        for ax in fig.axes:
            if not box.overlaps(ax.get_window_extent()):
                continue
            for line in ax.get_lines():
                xy = np.column_stack([np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)])
                pts = line.get_transform().transform(xy[np.all(np.isfinite(xy), axis=1)])
                inside = (pts[:, 0] >= box.x0) & (pts[:, 0] <= box.x1) & (pts[:, 1] >= box.y0) & (pts[:, 1] <= box.y1)
                assert not inside.any(), f"legend over the points of {line.get_label()!r}"


def labelled_ticks(axis):
    lo, hi = sorted(axis.get_view_interval())
    locs = [v for v in axis.get_majorticklocs() if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)]
    return [s for s in axis.get_major_formatter().format_ticks(locs) if s.strip()]


def titles(fig):
    out = [ax.get_title(loc=loc) for ax in fig.axes for loc in ("left", "center", "right")]
    return out + [fig.get_suptitle()]


def gid_lines(ax, prefix):
    return [line for line in ax.get_lines() if (line.get_gid() or "").startswith(prefix)]


def synthetic_sweep(S=(10, 100, 1000), alphas=ALPHAS, R=4, D=8):
    """A sweep.csv-like grid: t1 independent of S (as in the flow), t2 and t3 growing like S."""
    S_, A_ = (g.ravel().astype(float) for g in np.meshgrid(S, alphas, indexing="ij"))
    x = np.log(1 / A_)
    t1, t2, t3 = 13.0 * x + 20.0, 0.3 * S_ * x, 0.5 * S_ * x + 80.0
    n = S_.size
    return dict(S=S_, R=np.full(n, float(R)), D=np.full(n, float(D)), T=np.full(n, 32.0), N=np.full(n, 20.0),
                alpha=A_, t1=t1, t2=t2, t3=t3, plateau_length=t2 - t1, t1_leading_o1=t1 * 1.01,
                t2_leading_o1=t2 * 1.01, t3_leading_o1=t3 * 1.01)


# ----------------------------------------------------------------------------- sweep figures
def test_phase_times_S_draws_one_series_per_alpha_including_the_9th_and_10th():
    cols = synthetic_sweep()
    fig = plot_sweep(cols, [])["phase_times_S"]
    labels = [f"R=4, D=8, alpha={a:.2g}" for a in ALPHAS]
    assert len(fig.axes) == 4
    for ax, name in zip(fig.axes, ("t1", "t2", "t3", "plateau_length")):
        exact = gid_lines(ax, "exact:")
        assert len(exact) == len(ALPHAS) == 10
        assert sorted(line.get_gid()[6:] for line in exact) == sorted(labels)
        assert len(gid_lines(ax, "leading:")) == 10
        assert len({to_rgba(line.get_markeredgecolor()) for line in exact}) == 10  # one colour per alpha
        for line in exact:
            a = float(line.get_gid().split("alpha=")[1])
            k = int(np.argmin(np.abs(np.log(ALPHAS / a))))
            sel = cols["alpha"] == ALPHAS[k]
            np.testing.assert_array_equal(line.get_xdata(), cols["S"][sel])
            np.testing.assert_array_equal(line.get_ydata(), cols[name][sel])
    texts = [t.get_text() for leg in legends(fig) for t in leg.get_texts()]
    assert set(labels) <= set(texts)


def test_log_axes_show_at_least_three_labelled_ticks():
    fig = plot_sweep(synthetic_sweep(), [])["phase_times_S"]
    fig.canvas.draw()
    spans = []
    for ax in fig.axes:
        assert ax.get_xscale() == "log"
        assert labelled_ticks(ax.xaxis) == ["10", "100", "1000"]  # the grid's S values
        assert ax.get_yscale() == "log"
        lo, hi = ax.get_ylim()
        spans.append(math.log10(hi / lo))
        assert len(labelled_ticks(ax.yaxis)) >= 3, (ax.get_ylabel(), labelled_ticks(ax.yaxis))
    assert max(spans) >= 2  # the t2 and t3 panels span more than two decades
    # a narrow range (the t1 panel of a real sweep: 80 to 200) still gets three labels
    fig2, ax = plt.subplots()
    ax.set_yscale("log")
    ax.set_ylim(80, 210)
    label_log_axis(ax.yaxis, 80, 210)
    fig2.canvas.draw()
    assert len(labelled_ticks(ax.yaxis)) >= 3


def test_coinciding_t1_series_are_distinguishable_and_said_so():
    fig = plot_sweep(synthetic_sweep(), [])["phase_times_alpha"]
    ax_t1, ax_t2 = fig.axes[0], fig.axes[1]
    exact = gid_lines(ax_t1, "exact:")
    assert len(exact) == 3  # S = 10, 100, 1000
    np.testing.assert_array_equal(exact[0].get_ydata(), exact[1].get_ydata())  # they do coincide
    assert len({line.get_markersize() for line in exact}) == 3  # concentric: three sizes
    assert len({line.get_marker() for line in exact}) == 3
    assert len({to_rgba(line.get_markeredgecolor()) for line in exact}) == 3
    assert all(line.get_markerfacecolor() == "none" for line in exact)  # open, so the inner ones show
    assert len({line.get_markersize() for line in gid_lines(ax_t2, "exact:")}) == 1  # apart: one size
    notes = [t.get_text() for leg in legends(fig) for t in leg.get_texts() if "coincide" in t.get_text()]
    assert notes and "S=10, 100, 1000" in notes[0].replace("\n", " ")


def test_sweep_legends_do_not_cover_data():
    for fig in plot_sweep(synthetic_sweep(), []).values():
        assert_legends_clear(fig)


def test_many_series_are_thinned_and_the_legend_says_so():
    alphas = np.geomspace(1e-8, 1e-2, MAX_SERIES + 20)
    fig = plot_sweep(synthetic_sweep(S=(10, 100), alphas=alphas), [])["phase_times_S"]
    assert len(gid_lines(fig.axes[0], "exact:")) == MAX_SERIES
    texts = " ".join(t.get_text() for leg in legends(fig) for t in leg.get_texts()).replace("\n", " ")
    assert f"showing {MAX_SERIES} of {MAX_SERIES + 20} series" in texts


def test_real_small_sweep_keeps_every_alpha():
    n = len(ALPHAS)
    cols = {k: np.asarray(v, dtype=float) for k, v in dict(
        S=np.repeat([8, 16], n), R=[2] * 2 * n, D=[4] * 2 * n, T=[6] * 2 * n, N=[3] * 2 * n,
        alpha=np.tile(ALPHAS, 2)).items()}
    sw = run_sweep(cols, progress=False)
    figs = sw.plot()
    for ax in figs["phase_times_S"].axes:
        assert len(gid_lines(ax, "exact:")) == n
    t1_notes = [t.get_text() for leg in legends(figs["phase_times_alpha"]) for t in leg.get_texts()
                if "coincide" in t.get_text()]
    assert t1_notes  # t1 does not depend on S: the two series lie on each other
    for fig in figs.values():
        assert_legends_clear(fig)


# ----------------------------------------------------------------------------- flow figures
@pytest.mark.slow
def test_loss_figure_t3_inside_plateau_marked_legend_clear(flow):
    fig = plot_loss(flow)
    ax = fig.axes[0]
    ph = flow.phases
    lo, hi = ax.get_xlim()
    (t3,) = gid_lines(ax, "phase:t3")
    assert t3.get_xdata()[0] == pytest.approx(ph.t3) and lo < ph.t3 < hi
    assert ph.t3 >= 0.99 * flow.trajectory["t"][-1]  # the run ends at t3: the axis was extended past it
    (pl,) = gid_lines(ax, "plateau")
    assert ph.plateau is not None
    assert list(pl.get_xdata()) == [ph.plateau.t] and list(pl.get_ydata()) == [ph.plateau.loss]
    assert pl.get_marker() not in (None, "", "None")
    assert not any("no CUDA GPU" in t for t in titles(fig))
    assert_legends_clear(fig)


def test_invariant_figure_explains_every_line_and_marks_t1_t2(flow):
    fig = plot_invariant(flow)
    ax = fig.axes[0]
    leg = ax.get_legend()
    shown = {t.get_text() for t in leg.get_texts()}
    for line in ax.get_lines():
        assert not line.get_label().startswith("_"), line.get_gid()
        assert line.get_label() in shown
    ph = flow.phases
    for name in ("t1", "t2"):
        (line,) = gid_lines(ax, f"phase:{name}")
        assert line.get_xdata()[0] == pytest.approx(getattr(ph, name))
    (tol,) = gid_lines(ax, "tolerance")
    assert "rtol" in tol.get_label() and "error" in tol.get_label()
    assert_legends_clear(fig)


def test_loss_axes_keeps_a_last_sample_t3_inside():
    fig, ax = plt.subplots(constrained_layout=True)
    t = np.linspace(0, 100, 50)
    L = 2 * np.exp(-t / 20)
    loss_axes(ax, t, L, L / 2, L, log_A=2.0, H_A_given_R=1.0, t1=10.0, t2=30.0, t3=100.0,
              plateau=dict(t=20.0, loss=float(2 * np.exp(-1))))
    lo, hi = ax.get_xlim()
    assert lo < 100.0 < hi
    (pl,) = gid_lines(ax, "plateau")
    assert list(pl.get_xdata()) == [20.0]
    assert_legends_clear(fig)


# ----------------------------------------------------------------------------- model 2 and the paper figure
def test_step_axis_is_linear_over_stage_1_and_keeps_t3_inside():
    steps = np.arange(0, 14001, 70, dtype=float)  # the paper's model 2 history: every 70 steps
    L = 3.4 * np.exp(-steps / 3000)
    fig, ax = plt.subplots(constrained_layout=True)
    loss_axes(ax, steps, L, L / 2, L, log_A=3.47, H_A_given_R=2.08, t1=152.0, t2=1708.0, t3=11739.0,
              xlabel="training step", markers=True)
    lt = step_axis(ax, steps, 152.0, 1708.0, 11739.0, 70)
    assert ax.get_xscale() == "symlog" and lt >= 2 * 152.0
    lo, hi = ax.get_xlim()
    assert lo == 0 and lo < 11739.0 < hi
    (loss,) = gid_lines(ax, "loss")
    assert loss.get_marker() not in (None, "", "None")  # every evaluation shown
    fig.canvas.draw()
    assert len(labelled_ticks(ax.xaxis)) >= 3
    # a run that ends inside the linear range keeps the linear axis
    fig2, ax2 = plt.subplots()
    assert step_axis(ax2, np.arange(0, 200, 1.0), 80.0, None, None, 1) is None
    assert ax2.get_xscale() == "linear"


def test_device_name_has_no_remark():
    assert device_name("cpu") == "CPU"


@pytest.mark.slow
def test_paper_figures_content(tmp_path, monkeypatch):
    import figures.paper as paper

    saved = {}
    real = paper.save_figure

    def keep(fig, path, **kw):
        saved[path.rsplit("/", 1)[-1]] = fig
        real(fig, path, **kw)

    monkeypatch.setattr(paper, "save_figure", keep)
    out = tmp_path / "paper"
    assert paper.main(["--out", str(out), "--S", "8", "--R", "2", "--D", "4", "--T", "6", "--N", "3",
                       "--alpha", "1e-3", "--softmax-steps", "400", "--sgd-steps", "64", "--d", "32",
                       "--device", "cpu", "--quiet"]) == 0
    res = json.loads((out / "paper.json").read_text())
    seq, sgd = saved["sequential.png"], saved["sgd_vs_flow.png"]
    for fig in (seq, sgd):
        assert not any("no CUDA GPU" in t for t in titles(fig))
        assert_legends_clear(fig)
    ax1, ax2 = seq.axes
    # readable: at most 1600 px wide at the saved 150 dpi, no text under 9 pt; one reading of the schedule
    assert seq.get_size_inches()[0] * 150 <= 1600
    seq.canvas.draw()
    sizes = [t.get_fontsize() for t in seq.findobj(matplotlib.text.Text) if t.get_text().strip() and t.get_visible()]
    assert min(sizes) >= 9
    assert "8 per doubling" not in ax2.get_title() and "every multiple of 2 steps" in ax2.get_title()
    # model 1 and model 2 plateaus marked where the reports put them
    for ax, plateau in ((ax1, res["flow"]["phases"]["plateau"]), (ax2, res["softmax"]["phases"]["steps"]["plateau"])):
        (pl,) = gid_lines(ax, "plateau")
        assert pl.get_xdata()[0] == pytest.approx(plateau["t"]) and pl.get_ydata()[0] == pytest.approx(plateau["loss"])
        lo, hi = ax.get_xlim()
        for line in gid_lines(ax, "phase:"):
            assert lo < line.get_xdata()[0] < hi
    # model 2: a dot at every evaluation, step 0 on the axis, stage 1 on the linear part
    (loss,) = gid_lines(ax2, "loss")
    # every 2 steps (400 // 200) and 8 per doubling of the step count: step 0 plus the schedule's offsets
    from dynamics.training import EvalSchedule

    sched = EvalSchedule(2, 8, 400)
    expected = [0] + [k for k in range(1, 401) if k in sched]
    assert loss.get_marker() not in (None, "", "None") and list(loss.get_xdata()) == expected
    assert ax2.get_xlim()[0] == 0
    t1 = res["softmax"]["phases"]["steps"]["t1"]
    if ax2.get_xscale() == "symlog":
        assert ax2.xaxis.get_transform().linthresh >= t1


def test_capacity_figure_draws_the_information_bound_as_computed():
    """The dashed grey line labelled with the bound's formula and b has y = max_facts(b·P, M = N) at its x."""
    from analysis.capacity.sweep import CapacitySettings

    series = [dict(label="linear", params=[16, 36, 64], capacity=[[4, 5], [9, 8], [15, 14]],
                   fit=dict(slope=1.0, intercept=-1.4, ci=(0.8, 1.2), level=0.95))]
    check_bound_line(series, CapacitySettings(ds=(4, 6, 8)))
    # the real run of docs (d 4 6, seed 0, 256 steps): the bound crosses the upper left, where a legend once sat
    check_bound_line([dict(label="linear", params=[16, 36], capacity=[[6], [11]], fit=None),
                      dict(label="construction (linear)", params=[16, 36], capacity=[[4], [3]], fit=None)],
                     CapacitySettings(ds=(4, 6)))


def check_bound_line(series, settings):
    from analysis.capacity.__main__ import information_bound
    from analysis.capacity.bound import max_facts
    from figures.capacity import capacity_figure

    bound = information_bound(series, settings, 8.0)
    fig = capacity_figure(series, "capacity", bound=bound)
    label = "information bound: N log2 M = b·P (b = 8 bits)"
    lines = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == label]
    assert len(lines) == 1 and lines[0].get_linestyle() == "--"
    x, y = lines[0].get_xdata(), lines[0].get_ydata()
    assert x[0] == 16 and x[-1] == pytest.approx(max(series[0]["params"]))
    assert np.allclose(y, [max_facts(8 * p, lambda N: N) for p in x], rtol=1e-12)
    assert label in [t.get_text() for leg in legends(fig) for t in leg.get_texts()]
    assert_legends_clear(fig)
