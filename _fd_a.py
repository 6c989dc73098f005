import time, numpy as np, torch
torch.set_num_threads(1)
from models.task import TaskConfig, make_task
from dynamics.training import TrainConfig, train_schedule
from dynamics.experiment.schedule import Stage, Stop
from models.weights import Distribution
tc = TaskConfig(S=8, R=2, D=2, T=6, N=3)
for lr in (2.0, 4.0, 8.0):
    cfg = TrainConfig(task=tc, model="softmax", optimizer="sgd", lr=lr, batch=64, steps=400, eval_every=5, init_scale=1e-2, d=16, device="cpu", seed=1)
    st = (Stage("warmup", Distribution(subjects="0:4"), Stop(time=30)), Stage("all", Distribution(), Stop(time=150)))
    t0=time.time()
    r = train_schedule(cfg, st, eval_sets=("all","seen","unseen"))
    h=r.history
    print(lr, time.time()-t0, np.round(h["all_loss"][::4],3), r.task.log_A)
