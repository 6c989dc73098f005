"""Issue 23: FlowRun.params_at and classes_at name the packed state of state_at: SPEC §2's (W, K) in the
vocabulary's order, and the same per token class. Checked against the layout's unpacking, against models.linear's
compress (the inverse map) and against the definition of the model (its logits give the flow's loss)."""
import math

import numpy as np
import torch

from dynamics import FlowConfig, run_flow
from models.linear import compress, sequence_logits
from models.task import make_task
from tests.helpers import SMALL


def test_params_at_and_classes_at_name_the_packed_state():
    run = run_flow(FlowConfig(task=SMALL, alpha=1e-3))
    task = make_task(SMALL)
    t = 0.5 * run.t_final
    W, K = run.params_at(t)
    assert W.shape == (task.num_answers, task.vocab_size) and K.shape == (task.vocab_size,)
    Wt, Kc = run.objective.layout.unpack(run.state_at(t))
    Wt2, Kc2 = compress(task, W, K)  # the inverse map: back to the packed state exactly
    assert np.array_equal(Wt2, Wt.numpy()) and np.array_equal(Kc2, Kc.numpy())
    noise = slice(task.S + task.R, task.S + task.R + task.N)
    classes = run.classes_at(t)
    assert list(classes) == ["subject", "relation", "noise", "eos"]
    cols = dict(subject=slice(0, task.S), relation=slice(task.S, task.S + task.R), noise=noise,
                eos=slice(task.eos, task.eos + 1))
    for name, (w, k) in classes.items():
        n = 1 if name in ("noise", "eos") else (task.S if name == "subject" else task.R)
        assert w.shape == (task.num_answers, n) and k.shape == (n,)
        assert np.array_equal(w, W[:, cols[name]][:, :n]) and np.array_equal(k, K[cols[name]][:n])
    # every sequence of fact (s, r) with any noise tokens: the model's logits from (W, K) give the flow's loss
    tokens = torch.tensor([[0, task.S] + [noise.start + (i % task.N) for i in range(task.T - 3)] + [task.eos]])
    L = 0.0
    for ss in range(task.S):
        for rr in range(task.R):
            tk = tokens.clone()
            tk[0, 0], tk[0, 1] = ss, task.S + rr
            lg = sequence_logits(torch.as_tensor(W), torch.as_tensor(K), tk)[0]
            L += task.fact_weights[ss, rr] * float(-torch.log_softmax(lg, 0)[task.answers[ss][rr]])
    assert math.isclose(L, run.metrics_at(t)["loss"], rel_tol=1e-10)
