"""The hostile-input table (issue 24 §4), run by tests/cli/test_hostile_inputs.py: one row per input a program
must refuse cleanly. To add a case, add a row.

Row: (program, arguments, files, expected exit status, expected start of the message on stderr).
- program: the module run as ``python -m``;
- arguments: a list; ``{in}`` is the folder holding ``files``, ``{out}`` the --out path the test checks (give
  ``--out {out}`` yourself where the row is not about --out; rows without ``{out}`` get ``--out {out}`` added
  unless they pass --out themselves);
- files: {name: bytes, or a function returning bytes (big contents)} written into ``{in}`` before the run; the
  name ``@out`` creates ``{out}`` itself as a file with that content (an --out that is an existing file);
- every row must also write nothing: ``{out}`` and the working folder unchanged, exactly one line on stderr.
"""

SMALL_RUN = ["--S", "4", "--R", "2", "--D", "2", "--quiet"]

EXPERIMENT = b"""[task]
S = 4
R = 2
D = 2

[flow]
alpha = 1e-5

[distributions.a]
subjects = "0:2"

[[stages]]
name = "one"
train = "a"
until_loss = 0.5
"""


def _with_flow(line: bytes) -> bytes:
    return EXPERIMENT.replace(b"alpha = 1e-5", line)


def _nested(depth: int) -> bytes:
    return b"[task]\nS = " + b"[" * depth + b"]" * depth + b"\n"


def _mix(coefficient: bytes) -> bytes:
    return EXPERIMENT.replace(b'train = "a"', b'train = "m"').replace(
        b'[[stages]]', b'[distributions.b]\nsubjects = "2:4"\n\n[distributions.m]\nmix = [[' + coefficient
        + b', "a"], [1.0, "b"]]\n\n[[stages]]')


def _huge_string() -> bytes:
    return b'[task]\nfacts = "' + b"x" * (100 * 2 ** 20) + b'"\n'


def _weights(_entry: bytes) -> bytes:
    return EXPERIMENT.replace(b'subjects = "0:2"', b'weights_file = "w.csv"')


WEIGHTS_1E308 = b"1e308,1e308\n1e308,1e308\n1e308,1e308\n1e308,1e308\n"

ROWS = [
    # ---- tolerances, scales and dtypes: dynamics.run
    ("dynamics.run", SMALL_RUN + ["--atol", "1e300"], {}, 2, "error: atol = 1e+300 is too large"),
    ("dynamics.run", SMALL_RUN + ["--atol", "1"], {}, 2, "error: atol = 1 is too large"),
    ("dynamics.run", SMALL_RUN + ["--rtol", "1e-6", "--atol", "1e-11"], {}, 2, "error: atol = 1e-11 is too large"),
    ("dynamics.run", SMALL_RUN + ["--atol", "nan"], {}, 2, "error: atol"),
    ("dynamics.run", SMALL_RUN + ["--atol=-1e-20"], {}, 2, "error: atol"),
    ("dynamics.run", SMALL_RUN + ["--dtype", "float32", "--atol", "1e-50"], {}, 2, "error: atol = 1e-50 rounds to 0"),
    ("dynamics.run", SMALL_RUN + ["--rtol", "1e-30"], {}, 2, "error: rtol = 1e-30"),
    ("dynamics.run", SMALL_RUN + ["--rtol", "inf"], {}, 2, "error: rtol"),
    ("dynamics.run", SMALL_RUN + ["--dtype", "float32", "--rtol", "1e-9"], {}, 2, "error: rtol = 1e-09"),
    ("dynamics.run", SMALL_RUN + ["--dtype", "float32", "--alpha", "1e-40"], {}, 2, "error: alpha = 1e-40 has entries"),
    ("dynamics.run", SMALL_RUN + ["--dtype", "float32", "--rtol", "1e-7", "--alpha", "1e-37"], {}, 2,
     "error: rtol = 1e-07 cannot resolve alpha = 1e-37"),
    ("dynamics.run", SMALL_RUN + ["--dtype", "float32", "--alpha", "100"], {}, 2, "error: alpha = 100 with rtol"),
    ("dynamics.run", SMALL_RUN + ["--alpha", "nan"], {}, 2, "error: alpha"),
    ("dynamics.run", SMALL_RUN + ["--alpha", "1e308"], {}, 2, "error: alpha"),
    ("dynamics.run", SMALL_RUN + ["--alpha=-1e-5"], {}, 2, "error: alpha"),
    ("dynamics.run", SMALL_RUN + ["--dtype", "float16"], {}, 2, "python -m dynamics.run: error: argument --dtype"),
    ("dynamics.run", ["--S", "nan", "--quiet"], {}, 2, "python -m dynamics.run: error: argument --S"),
    ("dynamics.run", ["--S", "-4", "--quiet"], {}, 2, "error: S"),
    ("dynamics.run", SMALL_RUN + ["--t-max", "inf"], {}, 2, "error: t_max"),
    # ---- the capacity figure's information bound: analysis.capacity
    ("analysis.capacity", ["--bits-per-param", "nan", "--quiet"], {}, 2, "error: bits_per_param = nan"),
    ("analysis.capacity", ["--bits-per-param", "0", "--quiet"], {}, 2, "error: bits_per_param = 0"),
    # ---- --out
    ("dynamics.run", SMALL_RUN + ["--out", ""], {}, 2, "error: out = '' is empty"),
    ("dynamics.run", SMALL_RUN + ["--out", "   "], {}, 2, "error: out = '   ' is empty"),
    ("dynamics.run", SMALL_RUN + ["--out", "{out}"], {"@out": b"a file"}, 2, "error: out = "),
    ("models.train", ["--out", ""], {}, 2, "error: out = '' is empty"),
    ("models.train", ["--seeds", "2", "--out", ""], {}, 2, "error: out = '' is empty"),
    ("models.train", ["--out", " "], {}, 2, "error: out = ' ' is empty"),
    ("analysis.derive", ["--out", ""], {}, 2, "error: out = '' is empty"),
    ("analysis.sweep", ["--out", "  "], {}, 2, "error: out = '  ' is empty"),
    ("figures.paper", ["--out", ""], {}, 2, "error: out = '' is empty"),
    ("analysis.grid", ["flow", "--out", ""], {}, 2, "error: out = '' is empty"),
    ("dynamics.experiment", ["{in}/e.toml", "--out", ""], {"e.toml": EXPERIMENT}, 2, "error: out = '' is empty"),
    ("dynamics.experiment", ["{in}/e.toml", "--out", "{out}"], {"e.toml": EXPERIMENT, "@out": b"x"}, 2,
     "error: out = "),
    # ---- sizes and scales of the other programs
    ("models.train", ["--init-scale=-1e-3", "--quiet"], {}, 2, "error: "),  # 1e308: exit 3, diverged at step 0 (pinned)
    ("models.train", ["--init-scale", "nan", "--quiet"], {}, 2, "error: "),
    ("models.train", ["--lr", "inf", "--quiet"], {}, 2, "error: "),
    ("models.train", ["--S", "-1", "--quiet"], {}, 2, "error: "),
    # the transformer's shape, optimizer and flags of other models
    ("models.train", ["--model", "transformer", "--H", "0", "--quiet"], {}, 2, "error: H = 0 is too small"),
    ("models.train", ["--model", "transformer", "--d-h", "0", "--quiet"], {}, 2, "error: d_h = 0 is too small"),
    ("models.train", ["--model", "transformer", "--m", "-1", "--quiet"], {}, 2, "error: m = -1 is too small"),
    ("models.train", ["--model", "transformer", "--optimizer", "gd", "--quiet"], {}, 2, "error: optimizer = 'gd'"),
    ("models.train", ["--model", "softmax", "--H", "2", "--quiet"], {}, 2,
     "error: --H 2 applies to --model transformer"),
    ("models.train", ["--model", "transformer", "--init-scale", "1", "--quiet"], {}, 2, "error: --init-scale 1"),
    ("models.train", ["--model", "transformer", "--H", "100000", "--d-h", "100000", "--quiet"], {}, 2,
     "error: model = transformer"),
    ("models.train", ["--model", "transformer", "--seeds", "2", "--H", "100000", "--d-h", "100000", "--quiet"], {}, 2,
     "error: model = transformer"),
    ("analysis.derive", ["--alpha", "nan", "--quiet"], {}, 2, "error: alpha"),
    ("analysis.derive", ["--alpha", "inf", "--quiet"], {}, 2, "error: alpha"),
    ("analysis.sweep", ["--full-rtol", "1e-30", "--quiet", "--no-plots"], {}, 2, "error: full_rtol = 1e-30"),
    ("analysis.grid", ["flow", "--set", "atol=1"], {}, 2, "error: "),
    # ---- frd-grid capacity: sizes, widths, shapes, models, memory
    ("analysis.grid", ["capacity", "--grid", "d=0,4", "--workers", "1", "--quiet"], {}, 2,
     "error: run 0 (d=0): d = 0 is too small"),
    ("analysis.grid", ["capacity", "--model", "mlp", "--m", "-1", "--workers", "1", "--quiet"], {}, 2,
     "error: run 0 (the base configuration): m = -1 is too small"),
    ("analysis.grid", ["capacity", "--model", "transformer", "--d", "8", "--heads", "3", "--workers", "1",
                       "--quiet"], {}, 2, "error: run 0 (the base configuration): attn_ratio·d/heads"),
    ("analysis.grid", ["capacity", "--model", "rnn", "--workers", "1", "--quiet"], {}, 2,
     "error: run 0 (the base configuration): model = 'rnn' is unknown"),
    ("analysis.grid", ["capacity", "--d", "2147483647", "--workers", "1", "--quiet"], {}, 2,
     "error: run 0 (the base configuration, key "),
    ("analysis.grid", ["capacity", "--model", "transformer", "--d", "2147483646", "--workers", "1", "--quiet"], {},
     2, "error: run 0 (the base configuration, key "),
    # ---- staged trainer runs over seeds (frd-train --experiment FILE --seeds N, frd-grid train --experiment FILE)
    ("models.train", ["--experiment", "{in}/e.toml", "--seeds", "0", "--quiet"], {"e.toml": EXPERIMENT}, 2,
     "error: seeds = 0 is too small"),
    ("models.train", ["--experiment", "{in}/e.toml", "--seeds", "3", "--quiet"], {"e.toml": b"x = [\n"}, 2,
     "error: "),
    ("models.train", ["--experiment", "{in}/e.toml", "--seeds", "3", "--quiet"], {"e.toml": _nested(10_000)}, 2,
     "error: "),
    ("models.train", ["--experiment", "{in}/e.toml", "--seeds", "2", "--model", "softmax", "--quiet"],
     {"e.toml": EXPERIMENT.replace(b"until_loss = 0.5", b"until_time = 0.2")}, 2, "error: run 0 (seed=0): stage"),
    ("analysis.grid", ["train", "--experiment", "{in}/e.toml", "--grid", "seed=0:2", "--workers", "1", "--quiet"],
     {"e.toml": b"x = [\n"}, 2, "error: "),
    ("analysis.grid", ["train", "--experiment", "{in}/e.toml", "--compare-flow", "--workers", "1", "--quiet"],
     {"e.toml": EXPERIMENT}, 2, "error: run 0 (the base configuration): compare_flow"),
    # ---- hostile experiment files
    ("dynamics.experiment", ["{in}/e.toml"], {"e.toml": b"[task]\nS = 4\n\xff\xfe = 1\n"}, 2, "error: "),
    ("dynamics.experiment", ["{in}/e.toml"], {"e.toml": bytes(range(256)) * 64}, 2, "error: "),
    ("dynamics.experiment", ["{in}/e.toml"], {"e.toml": _nested(10_000)}, 2, "error: "),
    ("dynamics.experiment", ["{in}/e.toml"], {"e.toml": _mix(b"1e308")}, 2, "error: "),
    ("dynamics.experiment", ["{in}/e.toml"], {"e.toml": _huge_string}, 2, "error: "),
    ("dynamics.experiment", ["{in}/e.toml"], {"e.toml": _with_flow(b"alpha = 1e-5\natol = 1e300")}, 2,
     "error: "),
    ("dynamics.experiment", ["{in}/e.toml"], {"e.toml": _with_flow(b'alpha = 1e-40\ndtype = "float32"')}, 2,
     "error: "),
    ("dynamics.experiment", ["{in}/e.toml"], {"e.toml": _with_flow(b"alpha = 1e-5\nrtol = nan")}, 2, "error: "),
    ("dynamics.experiment", ["{in}/e.toml", "--rtol", "1e-30"], {"e.toml": EXPERIMENT}, 2, "error: "),
    ("dynamics.experiment", ["{in}/e.toml"], {"e.toml": _weights(b"1e308"), "w.csv": WEIGHTS_1E308}, 2, "error: "),
]
