"""Issue 23: results.json records the settings a run used. Each recorded setting of `python -m models.train` (both
models, the sampled trainer and full-batch GD) is checked against the trainer the run built: its initial
parameters, its device, its sampler and held-out set. Every recorded key has a check, so a new key cannot go
unchecked; a setting the run does not read must be recorded as null."""
import json
import math

import numpy as np
import pytest
import torch

from dynamics.training import gd as gd_module
from dynamics.training import sampled as sampled_module


def _capture(monkeypatch):
    """The trainers models.train builds, with a copy of their initial parameters."""
    built = []
    for mod, cls_name in ((sampled_module, "SampledTrainer"), (gd_module, "GDTrainer")):
        cls = getattr(mod, cls_name)
        original = cls.__init__

        def init(self, *args, _original=original, **kw):
            _original(self, *args, **kw)
            model = getattr(self, "model", None)
            start = {n: p.detach().double().clone() for n, p in model.named_parameters()} if model is not None \
                else dict(Wt=self.Wt.clone(), K=self.K.clone())
            built.append((self, start))

        monkeypatch.setattr(cls, "__init__", init)
    return built


def _run(tmp_path, monkeypatch, argv):
    from models.train import main

    built = _capture(monkeypatch)
    out = tmp_path / "run"
    assert main(argv + ["--device", "cpu", "--quiet", "--no-plots", "--out", str(out)]) == 0
    assert len(built) == 1
    return json.loads((out / "results.json").read_text())["config"], built[0]


def _check_task(rec, trainer):
    t = trainer.task
    assert rec["task"]["S"] == t.S and rec["task"]["R"] == t.R and rec["task"]["D"] == t.D
    assert rec["task"]["T"] == t.T and rec["task"]["N"] == t.N and rec["task"]["facts"] == t.config.facts
    assert rec["task"]["seed"] == t.config.seed and rec["task"]["zipf_subjects"] == t.config.zipf_subjects


def _checks(rec, trainer, start):
    """recorded key -> a check of it against what the trainer does."""
    c = trainer.config
    sampled = hasattr(trainer, "sampler")
    softmax = c.model == "softmax"
    xf = c.model == "transformer"
    first = next(iter(start.values()))

    def init():
        if xf:  # the capacity code's draw of a TransformerConfig of the recorded shape and seed (SPEC §11)
            from models.transformer import TransformerConfig, init_params

            assert rec["init"] == "gaussian-spec11"
            ref = init_params(TransformerConfig(d=rec["d"], H=rec["H"], d_h=rec["d_h"], m=rec["m"], seed=rec["seed"]))
            assert set(ref) == set(start)
            for n, v in ref.items():
                assert torch.allclose(start[n], torch.as_tensor(v).float().double()), n
        elif softmax:  # W_KQ, W_OV drawn N(0, init_std^2): not all equal, spread init_std
            assert rec["init"] == "gaussian"
            w = torch.cat([v.reshape(-1) for v in start.values()])
            assert len(torch.unique(w)) == w.numel()
            assert float(w.std()) == pytest.approx(rec["init_std"], rel=0.1)
            assert abs(float(w.mean())) < 4 * rec["init_std"] / math.sqrt(w.numel())
        elif rec["init"] == "uniform":  # every entry of W and K equal to the scale
            assert all(torch.all(v == v.reshape(-1)[0]) for v in start.values())
            assert float(first.reshape(-1)[0]) == pytest.approx(rec["init_scale"], rel=1e-6)
        else:  # balanced: K = scale, W = scale / sqrt|A|
            assert rec["init"] == "balanced"
            K = start["K"]
            assert torch.allclose(K, torch.full_like(K, rec["init_scale"]), rtol=1e-6)

    def init_scale():
        if xf:
            _is_none(rec["init_scale"])  # the transformer's scales are fixed (checked by init)
        elif softmax:  # the same draw again from the recorded d, init_scale and seed
            from models.modules import SoftmaxAttentionModel

            again = SoftmaxAttentionModel(trainer.task, rec["d"], rec["init_scale"], seed=rec["seed"])
            assert torch.equal(again.W_KQ.detach().double(), start["W_KQ"])
            assert torch.equal(again.W_OV.detach().double(), start["W_OV"])
        else:
            assert float(start["K"].reshape(-1)[0]) == pytest.approx(rec["init_scale"], rel=1e-6)

    def assert_equal(a, b):
        assert a == b, (a, b)

    def _is_none(v):
        assert v is None, v

    checks = dict(
        task=lambda: _check_task(rec, trainer),
        model=lambda: assert_equal(rec["model"], {"SoftmaxAttentionModel": "softmax", "TransformerModule": "transformer",
                                                  "LinearAttentionModel": "linear"}[type(trainer.model).__name__])
        if sampled else assert_equal(rec["model"], "linear"),
        optimizer=lambda: assert_equal(rec["optimizer"], "gd" if not sampled else
                                       ("adam" if trainer.adam is not None else "sgd")),
        lr=lambda: assert_equal(rec["lr"], c.lr),
        init=init,
        init_scale=init_scale,
        init_std=lambda: assert_equal(rec["init_std"], c.init_scale / math.sqrt(trainer.model.d)),
        d=lambda: assert_equal(rec["d"], trainer.model.d) if softmax or xf else _is_none(rec["d"]),
        H=lambda: assert_equal(rec["H"], trainer.model.WQ.shape[0]) if xf else _is_none(rec["H"]),
        d_h=lambda: assert_equal(rec["d_h"], trainer.model.WQ.shape[2]) if xf else _is_none(rec["d_h"]),
        m=lambda: (assert_equal(rec["m"], trainer.model.W1.shape[1] if hasattr(trainer.model, "W1") else 0) if xf
                   else _is_none(rec["m"])),
        batch=lambda: (assert_equal(rec["batch"], trainer.sampler.sample(c.batch).targets.shape[0])
                       if sampled else _is_none(rec["batch"])),
        seed=lambda: (assert_equal(rec["seed"], c.seed) if sampled else _is_none(rec["seed"])),
        eval_size=lambda: (assert_equal(rec["eval_size"], trainer.evaluator.batch.targets.shape[0])
                           if sampled else _is_none(rec["eval_size"])),
        steps=lambda: assert_equal(rec["steps"], c.steps),
        eval_every=lambda: assert_equal(rec["eval_every"], c.eval_every),
        eval_geometric=lambda: assert_equal(rec["eval_geometric"], c.eval_geometric),
        eps_conv=lambda: assert_equal(rec["eps_conv"], c.eps_conv),
        device=lambda: assert_equal(rec["device"], str(trainer.device)),
        cuda_graph=lambda: (_is_none(rec["cuda_graph"]) if trainer.device.type != "cuda" else
                            assert_equal(rec["cuda_graph"], c.cuda_graph)),
        threads=lambda: assert_equal(rec["threads"], c.threads),  # CPU runs: torch_threads(threads)
        manual_grad=lambda: (assert_equal(rec["manual_grad"], c.manual_grad) if softmax else
                             _is_none(rec["manual_grad"])),
    )
    return checks


@pytest.mark.parametrize("argv", [
    ["--model", "softmax", "--d", "32", "--lr", "1", "--steps", "20", "--eval-every", "10", "--seed", "3"],
    pytest.param(["--model", "softmax", "--d", "32", "--optimizer", "adam", "--lr", "1e-3", "--steps", "10",
                  "--init-scale", "0.5"], marks=pytest.mark.slow),
    ["--model", "linear", "--optimizer", "sgd", "--lr", "0.1", "--steps", "20", "--eval-every", "10",
     "--batch", "64"],
    ["--model", "linear", "--optimizer", "gd", "--init", "balanced", "--lr", "0.5", "--steps", "20",
     "--eval-every", "10"],
    ["--model", "transformer", "--d", "8", "--H", "2", "--d-h", "3", "--m", "5", "--steps", "10", "--eval-every",
     "5", "--seed", "4", "--batch", "32"],
], ids=["softmax-sgd", "softmax-adam", "linear-sgd", "linear-gd", "transformer-adam"])
def test_results_json_records_the_settings_used(tmp_path, monkeypatch, argv):
    rec, (trainer, start) = _run(tmp_path, monkeypatch, argv + ["--S", "8", "--R", "2", "--D", "4", "--T", "7",
                                                                "--N", "3"])
    checks = _checks(rec, trainer, start)
    assert set(rec) == set(checks) - ({"init_std"} if trainer.config.model != "softmax" else set()), \
        "every recorded setting needs a check"
    for key in rec:
        checks[key]()


def test_softmax_record_says_gaussian_not_uniform():
    """The defect itself, without a run: TrainConfig's init field defaults to 'uniform', which model 2 ignores."""
    from analysis.results.training import recorded_config
    from dynamics import TrainConfig

    c = TrainConfig(model="softmax", init_scale=1e-3, d=256, device="cpu")
    assert c.init == "uniform"
    rec = recorded_config(c, "cpu")
    assert rec["init"] == "gaussian" and rec["init_std"] == pytest.approx(1e-3 / 16)
    lin = recorded_config(TrainConfig(model="linear", optimizer="gd", device="cpu"), "cpu")
    assert lin["init"] == "uniform" and lin["d"] is None and lin["batch"] is None and lin["seed"] is None
    assert np.isfinite(lin["init_scale"])


@pytest.mark.slow
def test_paper_json_records_the_settings_used(tmp_path):
    """figures.paper's paper.json: model 2's record says gaussian, model 1's SGD uniform, and the flow's config is
    there (balanced at --alpha)."""
    from figures.paper import main

    out = tmp_path / "paper"
    assert main(["--out", str(out), "--S", "8", "--R", "2", "--D", "4", "--T", "7", "--N", "3", "--softmax-steps",
                 "20", "--sgd-steps", "20", "--d", "16", "--device", "cpu", "--quiet", "--alpha", "1e-3"]) == 0
    res = json.loads((out / "paper.json").read_text())
    soft, sgd, flow = res["softmax"]["config"], res["sgd_vs_flow"]["config"], res["flow"]["config"]
    assert soft["model"] == "softmax" and soft["init"] == "gaussian"
    assert soft["init_std"] == pytest.approx(1e-3 / 4) and soft["d"] == 16
    assert sgd["model"] == "linear" and sgd["init"] == "uniform" and sgd["init_scale"] == 1e-5 and sgd["d"] is None
    assert flow["init"] == "balanced" and flow["alpha"] == 1e-3 and flow["task"]["S"] == 8
