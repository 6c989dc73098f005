"""Issue 23: default output names are short and still unique. An experiment file's run is named by the file,
without the task flags it replaces; a name over 60 characters keeps its leading settings and ends in a hash of all
of them; the main job's name is unchanged."""
import os

from common.cli import default_out


def _train(argv):
    from models.train import build_parser, default_out_dir

    p = build_parser()
    return default_out_dir(p.parse_args(argv), p)


def test_experiment_run_is_named_by_its_file():
    name = _train(["--experiment", "experiments/warmup.toml", "--optimizer", "gd", "--steps", "200000",
                   "--compare-flow"])
    assert name == "runs/train-linear-warmup-gd-steps200000-flow"
    # the task flags are the file's to set: they do not enter the name
    assert _train(["--experiment", "experiments/warmup.toml", "--S", "8"]) == "runs/train-linear-warmup"


def test_long_names_end_in_a_hash_and_stay_unique():
    base = ["--model", "softmax", "--optimizer", "adam", "--lr", "1e-3", "--S", "32", "--R", "8", "--D", "16",
            "--T", "64", "--N", "40", "--facts", "random", "--task-seed", "3", "--batch", "256", "--steps", "20000",
            "--eval-every", "100", "--eval-geometric", "8", "--init-scale", "0.01"]
    names = {_train(base + ["--seed", str(k)]) for k in range(20)}
    assert len(names) == 20
    for n in names:
        assert len(os.path.basename(n)) <= 60 and n.startswith("runs/train-softmax-S32-R8-D16-adam-")
        assert n.rsplit("-", 1)[1].startswith("h") and len(n.rsplit("-", 1)[1]) == 9
    assert _train(base + ["--seed", "3"]) == _train(base + ["--seed", "3"])  # deterministic


def test_short_names_and_the_main_job_are_unchanged():
    from dynamics.run import build_parser, default_out_dir

    p = build_parser()
    assert default_out_dir(p.parse_args(["--S", "16", "--R", "4", "--D", "8"]), p) == "runs/flow-S16-R4-D8"
    assert _train(["--model", "softmax", "--lr", "4", "--steps", "14000"]) == \
        "runs/train-softmax-S16-R4-D8-lr4-steps14000"
    import argparse

    q = argparse.ArgumentParser()
    for k in "abcd":
        q.add_argument(f"--{k}", default=None)
    args = q.parse_args([x for k in "abcd" for x in (f"--{k}", k * 20)])
    assert default_out("runs/x", q, args) == f"runs/x-a{'a' * 20}-b{'b' * 20}" + default_out("runs/x", q, args)[-10:]
    assert default_out("runs/x", q, args, max_len=1000) == "runs/x-" + "-".join(f"{k}{k * 20}" for k in "abcd")
