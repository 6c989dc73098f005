"""Every figure reads correctly without the code (tracker issue 23): no empty panel on a degenerate grid and a
legend naming every field that varies; one colour per evaluation set in every plot; curves that lie on others
visible; stage switches explained; the excess measure, the seed-band verdicts, the warm-up, fine-tuning and
paper figures said right. Each test fails on the drawing before the fix."""
import importlib.util
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from figures.bands import plot_bands  # noqa: E402
from figures.experiment import experiment_figure, sweep_figure  # noqa: E402
from figures.style import EVAL_SET_COLORS, set_color  # noqa: E402
from figures.sweep import plot_sweep  # noqa: E402
from tests.helpers import ROOT  # noqa: E402

LOG_A = math.log(32)
H = math.log(8)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ----------------------------------------------------------------------------- helpers
def assert_no_empty_panel(fig):
    """Every axes draws at least one line or collection with a finite data point."""
    for ax in fig.axes:
        finite = False
        for line in ax.get_lines():
            xy = np.column_stack([np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)])
            finite |= bool(np.any(np.all(np.isfinite(xy), axis=1)))
        for coll in ax.collections:
            off = np.asarray(coll.get_offsets(), float)
            paths = [p.vertices for p in coll.get_paths()] if hasattr(coll, "get_paths") else []
            finite |= bool(off.size and np.isfinite(off).all(axis=-1).any())
            finite |= any(np.isfinite(v).all(axis=1).any() for v in paths if len(v))
        assert finite, f"empty panel: {ax.get_ylabel()!r} / {ax.get_title()!r}"


def legend_text(fig) -> str:
    legs = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    return " ".join(t.get_text() for leg in legs for t in leg.get_texts()).replace("\n", " ")


def sweep_grid(S=(16,), alphas=(1e-8,), zipf=(0.0, 0.5, 1.0, 1.5), R=4, D=8):
    """A sweep.csv-like grid over S x alpha x zipf_subjects; leading-order + O(1) lines only where the Zipf
    exponent is 0 (the reduced rows), as analysis.sweep writes them."""
    S_, A_, Z_ = (g.ravel().astype(float) for g in np.meshgrid(S, alphas, zipf, indexing="ij"))
    n = S_.size
    x = np.log(1 / A_)
    t1, t2 = (13.0 - 2 * Z_) * x + 20.0, 0.3 * S_ * x * (1 + Z_)
    t3 = t2 + 80.0
    o1 = np.where(Z_ == 0, 1.01, np.nan)
    return dict(S=S_, R=np.full(n, float(R)), D=np.full(n, float(D)), T=np.full(n, 32.0), N=np.full(n, 20.0),
                alpha=A_, zipf_subjects=Z_, zipf_relations=np.zeros(n), t1=t1, t2=t2, t3=t3,
                plateau_length=t2 - t1, t1_leading=t1 * 0.9, t2_leading=t2 * 0.9, t3_leading=t3 * 0.9,
                t1_leading_o1=t1 * o1, t2_leading_o1=t2 * o1, t3_leading_o1=t3 * o1)


def two_stage(order=("all", "train", "seen", "unseen", "old", "new"), *, above=False, excess=True):
    """A pretrain -> finetune trajectory with the coincidences of the shipped fine-tuning run: in stage 1
    train = seen = old and unseen = new; in stage 2 seen = all, train = new, unseen empty."""
    t = np.concatenate([[0.0], np.geomspace(0.1, 100.0, 40), np.geomspace(100.0, 1000.0, 30)])
    stage = np.concatenate([np.zeros(41), np.ones(30)])
    s1 = stage == 0
    base = {"all": 2.5 - 0.001 * t, "old": LOG_A * np.exp(-t / 40.0), "new": (LOG_A - 0.05) * np.exp(-t / 900.0)}
    if above:
        base["new"] = base["new"] + 0.3 * np.exp(-((t - 30.0) / 10.0) ** 2)
    loss = {"all": base["all"], "old": base["old"], "new": base["new"],
            "train": np.where(s1, base["old"], base["new"]), "seen": np.where(s1, base["old"], base["all"]),
            "unseen": np.where(s1, base["new"], np.nan)}
    cols = {"stage": stage, "t": t}
    for n in order:
        cols[f"{n}_loss"] = loss[n]
        cols[f"{n}_p_true"] = np.exp(-loss[n])
        cols[f"{n}_hallucination_gap"] = loss[n] / 2
        if excess:
            cols[f"{n}_excess"] = loss[n] - H
    stages = [dict(name="pretrain", t_start=0.0, t_end=100.0), dict(name="finetune", t_start=100.0, t_end=1000.0)]
    ents = [{"all": H, "unseen": H}, {"all": H, "unseen": math.nan}]
    return cols, stages, ents


def set_lines(ax, prefix="set:") -> dict:
    return {line.get_gid()[len(prefix):]: line for line in ax.get_lines()
            if (line.get_gid() or "").startswith(prefix)}


def load_shipped():
    spec = importlib.util.spec_from_file_location("shipped", os.path.join(ROOT, "experiments", "shipped.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Args:
    S, R, D, alpha, eps = 256, 4, 8, 1e-5, 1e-2


# ----------------------------------------------------------------------------- degenerate grids
def test_sweep_with_one_alpha_draws_against_the_zipf_exponent_only():
    """The issue's grid (--S 16 --alpha 1e-8 --zipf-subjects 0 0.5 1 1.5): no figure against alpha or S (one
    value each), the Zipf figure with every panel drawn and a title promising only what is drawn."""
    figs = plot_sweep(sweep_grid(), [])
    assert set(figs) == {"phase_times_zipf"}
    for fig in figs.values():
        assert_no_empty_panel(fig)


def test_every_figure_of_a_sweep_names_every_varying_field():
    cols = sweep_grid(S=(16, 32), zipf=(0.0, 1.0))  # one alpha; S and the Zipf exponent vary
    figs = plot_sweep(cols, [])
    assert set(figs) == {"phase_times_S", "phase_times_zipf"}
    text_S, text_z = legend_text(figs["phase_times_S"]), legend_text(figs["phase_times_zipf"])
    assert "zipf_subjects=0" in text_S and "zipf_subjects=1" in text_S  # the series of phase_times_S differ by it
    assert "S=16" in text_z and "S=32" in text_z
    for fig in figs.values():
        assert_no_empty_panel(fig)
    # one alpha, the Zipf exponent the only other field: the four rows were one unlabelled column at one alpha
    cols = sweep_grid(alphas=(1e-8, 1e-6), zipf=(0.0, 0.5, 1.0, 1.5))
    fig = plot_sweep(cols, [])["phase_times_alpha"]
    assert_no_empty_panel(fig)
    assert all(f"zipf_subjects={z:g}" in legend_text(fig) for z in (0, 0.5, 1, 1.5))


def test_sweep_titles_promise_lines_only_when_drawn():
    cols = sweep_grid(alphas=(1e-8, 1e-6), zipf=(0.5, 1.0))  # no reduced row: no leading-order + O(1) line
    fig = plot_sweep(cols, [])["phase_times_alpha"]
    assert not [line for ax in fig.axes for line in ax.get_lines() if (line.get_gid() or "").startswith("leading:")]
    assert "lines" not in fig.get_suptitle().replace("no leading-order line", "")
    cols = sweep_grid(alphas=(1e-8, 1e-6), zipf=(0.0,))
    assert "lines leading order + O(1)" in plot_sweep(cols, [])["phase_times_alpha"].get_suptitle()


def test_degenerate_inputs_of_the_other_figures_draw_no_empty_panel():
    cols, stages, ents = two_stage()
    one = {k: v[cols["stage"] == 0] for k, v in cols.items()}  # a single stage
    assert_no_empty_panel(experiment_figure(one, stages[:1], log_A=LOG_A, entropies=ents[:1]))
    assert_no_empty_panel(sweep_figure([1.0], {"a": [2.0]}, xlabel="x", ylabel="y"))  # one x value
    x = np.arange(0, 100, 10.0)
    bcols = {"step": x, **{f"{n}_{s}": np.full(x.size, 1.0) for n in ("loss", "relation_loss", "subject_loss")
                           for s in ("mean", "std", "min", "max")}}
    group = dict(columns=bcols, config=dict(model="softmax", d=16, optimizer="sgd", batch=32, lr=1.0, steps=100,
                                            S=4, R=2, D=2, T=6, N=3, init_scale=1e-3), seeds=[0],
                 theory=dict(log_A=math.log(4), H_A_given_R=math.log(2)), verdicts=[dict(seed=0, confirmed=True)],
                 overall=True, n_confirmed=1, mean_curve_confirmed=True)
    assert_no_empty_panel(plot_bands(group))  # one seed


# ----------------------------------------------------------------------------- evaluation-set colours
def test_one_colour_per_evaluation_set_in_the_flow_and_the_trainer_plots():
    flow_cols, stages, ents = two_stage()
    # the trainer's history: the train set's columns come last (models.train renames the plain columns)
    trainer_cols, _, _ = two_stage(order=("all", "seen", "unseen", "old", "new", "train"), excess=False)
    fig_flow = experiment_figure(flow_cols, stages, log_A=LOG_A, entropies=ents)
    fig_train = experiment_figure(trainer_cols, stages, log_A=LOG_A,
                                  flow=dict(t=trainer_cols["t"], train_loss=trainer_cols["train_loss"] * 1.01))
    for name in ("all", "train", "seen", "unseen", "old", "new"):
        colours = {to_hex(lines[name].get_color()) for fig in (fig_flow, fig_train) for ax in fig.axes
                   for lines in [set_lines(ax)] if name in lines}
        assert colours == {to_hex(EVAL_SET_COLORS[name])}, name
    assert len({to_hex(c) for c in EVAL_SET_COLORS.values()}) == len(EVAL_SET_COLORS)  # never reused
    assert set_color("custom") == set_color("custom") and set_color("custom") not in EVAL_SET_COLORS.values()


def test_compare_flow_draws_the_flow_dashed_in_the_set_colour():
    cols, stages, _ = two_stage(excess=False)
    fig = experiment_figure(cols, stages, log_A=LOG_A, flow=dict(t=cols["t"], train_loss=cols["train_loss"] + 0.1))
    (flow,) = set_lines(fig.axes[0], "flow:").values()
    assert to_hex(flow.get_color()) == to_hex(EVAL_SET_COLORS["train"]) and flow.get_linestyle() == "--"
    np.testing.assert_allclose(flow.get_ydata(), cols["train_loss"] + 0.1)
    assert "exact flow" in legend_text(fig) and "exact gradient flow" in fig._supxlabel.get_text()


# ----------------------------------------------------------------------------- experiment plots
def test_curves_lying_on_others_stay_visible_and_the_legend_says_so():
    cols, stages, ents = two_stage()
    fig = experiment_figure(cols, stages, log_A=LOG_A, entropies=ents)
    lines = set_lines(fig.axes[0])
    assert lines["train"].get_linestyle() == "-"
    for name, under in (("seen", "train"), ("old", "train"), ("new", "unseen")):
        assert lines[name].get_linestyle() != "-", name  # drawn with gaps over the curve it lies on
        assert lines[name].get_zorder() > lines[under].get_zorder()
        assert f"= {under}" in lines[name].get_label() or under in lines[name].get_label()
    assert "in pretrain" in lines["new"].get_label()
    # three on one curve (train, seen, old): old on top of seen, in another dash pattern
    assert lines["old"].get_zorder() > lines["seen"].get_zorder()
    assert lines["old"]._unscaled_dash_pattern != lines["seen"]._unscaled_dash_pattern


def test_stage_switches_are_marked_and_the_jumps_explained():
    cols, stages, ents = two_stage()
    fig = experiment_figure(cols, stages, log_A=LOG_A, entropies=ents)
    for ax in fig.axes:
        (switch,) = [line for line in ax.get_lines() if line.get_gid() == "stage_boundary"]
        assert switch.get_xdata()[0] == 100.0
    assert "stage switch" in legend_text(fig)
    caption = fig._supxlabel.get_text().replace("\n", " ")
    assert "stage switches" in caption and "not forgetting" in caption
    assert "train, seen, unseen" in caption


def test_a_loss_above_log_A_is_explained_on_the_figure():
    cols, stages, ents = two_stage(above=True)
    caption = experiment_figure(cols, stages, log_A=LOG_A, entropies=ents)._supxlabel.get_text()
    assert "above log|A|" in caption and "new" in caption.split("above log|A|")[1][:40]
    cols, stages, ents = two_stage()
    assert "above log|A|" not in experiment_figure(cols, stages, log_A=LOG_A, entropies=ents)._supxlabel.get_text()


def test_excess_is_said_to_be_loss_minus_H_with_its_uniform_start():
    cols, stages, ents = two_stage()
    fig = experiment_figure(cols, stages, log_A=LOG_A, entropies=ents)
    text = legend_text(fig)
    assert "> 0: confident wrong answers" not in text  # false at t = 0 (uniform prediction, excess > 0)
    assert "excess = loss $-$ $H(A|R)$" in text and "once $p(a|r)$ is learned" in text
    refs = [line for line in fig.axes[2].get_lines() if line.get_gid() == "reference"]
    assert any(np.allclose(line.get_ydata(), LOG_A - H) and "uniform" in line.get_label() for line in refs)
    assert any(np.allclose(line.get_ydata(), 0.0) for line in refs)


# ----------------------------------------------------------------------------- seed bands
def test_band_verdicts_name_the_curves_they_judge():
    x = np.arange(0, 100, 10.0)
    bcols = {"step": x, **{f"{n}_{s}": np.full(x.size, 1.0) for n in ("loss", "relation_loss", "subject_loss")
                           for s in ("mean", "std", "min", "max")}}
    group = dict(columns=bcols, config=dict(model="softmax", d=16, optimizer="sgd", batch=32, lr=1.0, steps=100,
                                            S=4, R=2, D=2, T=6, N=3, init_scale=1e-3), seeds=[0, 1, 2],
                 theory=dict(log_A=math.log(4), H_A_given_R=math.log(2)),
                 verdicts=[dict(seed=0, confirmed=True), dict(seed=1, confirmed=False), dict(seed=2, confirmed=True)],
                 overall=False, n_confirmed=2, mean_curve_confirmed=True)
    ax = plot_bands(group).axes[0]
    title = ax.get_title().replace("\n", " ")
    assert "each seed's own curves" in title and "(2 of 3)" in title and "overall (every seed): no" in title
    assert "mean curves (drawn here): confirmed" in title
    assert "NOT confirmed" not in title
    heading = ax.get_legend().get_title().get_text()
    assert "mean curves" in heading and "confirmed" in heading


# ----------------------------------------------------------------------------- shipped experiments
def test_warmup_figure_log_axis_and_no_warmup_as_a_reference_line():
    shipped = load_shipped()
    ks = (16, 32, 64, 128, 256)
    rows = [dict(k=k, warmup=k < 256, t_warmup=0.0 if k == 256 else 50.0 * k, t_total=11800.0 + 30 * k * (k < 256))
            for k in ks]
    fig = shipped.figure("warmup", rows, {}, Args())
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    for line in ax.get_lines():
        if (line.get_gid() or "").startswith("series:"):
            assert 256 not in list(line.get_xdata())  # no line joins the no-warm-up run to k = 128
    (ref,) = [line for line in ax.get_lines() if line.get_gid() == "reference"]
    assert np.allclose(ref.get_ydata(), 11800.0) and "no warm-up" in ref.get_label()


def test_finetune_figure_labels_every_line_and_states_the_setting():
    shipped = load_shipped()
    t = np.linspace(0, 200, 50)
    curves = {rho: dict(t=t, old=np.full(50, 0.01 + rho), new=np.full(50, 2.0), unseen_excess=np.full(50, 1.4),
                        t_pre=100.0, log_A=LOG_A, H=H) for rho in (0.0, 0.1)}
    fig = shipped.figure("finetune", [], curves, Args())
    for ax in fig.axes:
        for line in ax.get_lines():
            assert not line.get_label().startswith("_"), f"unlabelled line in {ax.get_title()!r}"
    setting = fig.get_suptitle()
    assert all(s in setting for s in ("S=256", "R=4", "D=8", "alpha=1e-05"))
    assert "> 0: confident wrong answers" not in legend_text(fig)


# ----------------------------------------------------------------------------- paper figure
def test_committed_sequential_figure_is_readable_size():
    img = plt.imread(os.path.join(ROOT, "docs", "paper", "sequential.png"))
    assert img.shape[1] <= 1600
