"""analysis.capacity.transformer (SPEC §11): task sizes along each scaling, a big enough transformer storing
few facts perfectly, an attention-only model with too little H·d_h failing, and a tiny capacity search."""
import pytest

from analysis.capacity.transformer import (TransformerSettings, facts_of, run_transformer_sweep, task_sizes,
                                           transformer_oracle)
from common.errors import ConfigError
from dynamics.capacity_training import TransformerTrainConfig, train_transformers
from models.transformer import TransformerConfig


def test_task_sizes_along_the_scalings():
    assert task_sizes("linear", 5, 8) == (5, 5, 8) and facts_of("linear", 5) == 25
    assert task_sizes("square", 9, 8) == (9, 3, 8) and facts_of("square", 10) == 30
    assert task_sizes("distinct", 4, 8) == (4, 4, 4)


def test_big_transformer_stores_few_facts_perfectly():
    c = TransformerConfig(S=3, R=3, D=3, d=16, H=2, d_h=8, m=16, T=6, seed=0)
    run = train_transformers([c], [3e-2], TransformerTrainConfig(batch=64, max_steps=300, eval_every=10))
    assert run.success[0] and run.best_accuracy[0] == 1.0


def test_attention_only_with_tiny_heads_fails():
    """H·d_h = 1 gives every sequence's output on one line of R^d (h = scalar · W_O row): the logits are one
    scalar times a fixed vector, so at most two answers can ever be predicted; 6 relations × D = 4 answers are
    not all reachable and accuracy stays far from 99 %."""
    c = TransformerConfig(S=4, R=6, D=4, d=16, H=1, d_h=1, m=0, T=6, seed=0)
    run = train_transformers([c, c], [3e-2, 1e-1], TransformerTrainConfig(batch=64, max_steps=300, eval_every=20))
    assert not run.success.any() and run.best_accuracy.max() < 0.5


def test_oracle_answers_per_seed():
    s = TransformerSettings(ds=(16,), heads=2, head_dim=8, mlp_width=16, D=3, T=6, seeds=(0, 1), batch=64,
                            max_steps=300, eval_every=10)
    ok = transformer_oracle(s, 16, 2, 8, 16)
    assert ok(2, [0, 1]) == [True, True]


@pytest.mark.slow
def test_tiny_sweep_result_and_fit():
    s = TransformerSettings(ds=(8, 16), seeds=(0, 1), max_steps=256, max_doublings=0, rtol=0.3)
    res = run_transformer_sweep(s)
    rows = res.rows()
    assert len(rows["facts"]) == 4 and all(f == S * R for f, S, R in zip(rows["facts"], rows["S"], rows["R"]))
    assert rows["params"][0] == 4 * 2 * 4 * 8


@pytest.mark.parametrize("kw, match", [(dict(ds=(0,)), "d = 0"), (dict(mlp_width=-1), "mlp_width"),
                                       (dict(ds=(10,), heads=3), "not a positive integer"),
                                       (dict(scaling="cube"), "scaling"), (dict(T=2), "T = 2"),
                                       (dict(with_training=False), "nothing to search")])
def test_bad_settings_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        TransformerSettings(**kw)


def test_oracle_with_restarts_succeeds_when_any_restart_does():
    """Each seed's answer is the OR over restarts × learning rates of separately trained runs."""
    s = TransformerSettings(ds=(8,), heads=2, head_dim=4, D=4, T=6, seeds=(0, 1), lrs=(3e-2,), restarts=3,
                            batch=32, max_steps=48, eval_every=8)
    got = transformer_oracle(s, 8, 2, 4, 0)(3, [0, 1])
    train = s.train_config()
    for seed, answer in zip((0, 1), got):
        runs = [train_transformers([TransformerConfig(S=3, R=3, D=4, d=8, H=2, d_h=4, T=6, seed=seed, restart=k)],
                                   [3e-2], train).success[0] for k in range(3)]
        assert answer == any(runs)


def test_construction_search_probes_are_the_constructions_own_accuracies():
    """with_construction: every probe's outcome in the construction's search is construction_accuracy >= 0.99 on
    that seed's instance of that size, recomputed here; its rows and fit sit beside the trained ones."""
    from models.transformer.construction import construction_accuracy

    s = TransformerSettings(ds=(16, 32), seeds=(0, 1), max_steps=8, batch=16, eval_every=4, max_doublings=1, rtol=0,
                            with_construction=True)
    res = run_transformer_sweep(s)
    assert len(res.construction) == 2 and res.construction_fit is not None
    for (d, H, dh, m), r, facts in zip(s.shapes(), res.construction, res.construction_facts):
        for i, seed in enumerate(r.seeds):
            assert facts[i] == facts_of("linear", r.capacity[i])
            for size, ok in r.probes[i]:
                S, R, D = task_sizes("linear", size, s.D)
                acc = construction_accuracy(TransformerConfig(S=S, R=R, D=D, d=d, H=H, d_h=dh, m=m, T=s.T, seed=seed))
                assert ok == (acc >= 0.99)
    rows = res.rows()
    assert rows["model"].count("construction") == rows["model"].count("transformer") == 4


def test_construction_memory_counted_before_running(monkeypatch):
    """A wide MLP makes the construction's S·R × m feature matrix the largest allocation: with memory for the
    training but not for it, the sweep with constructions is refused before anything runs, the one without
    is not."""
    import common.memory

    from analysis.capacity.transformer import construction_bytes, training_bytes

    kw = dict(ds=(8,), heads=2, head_dim=4, mlp_width=4096, seeds=(0,), batch=8, max_doublings=0)
    s = TransformerSettings(**kw, with_construction=True)
    size = s.bracket(8, 2, 4, 4096)[1]
    train, build = training_bytes(s, size, 8, 2, 4, 4096), construction_bytes(s, size, 8, 2, 4, 4096)
    assert build > train
    monkeypatch.setattr(common.memory, "available_memory_bytes", lambda: train + build)  # half: between the two
    with pytest.raises(ConfigError, match="GiB"):
        s.check_memory()
    TransformerSettings(**kw).check_memory()
