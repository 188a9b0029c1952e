import subprocess

import numpy as np
import pandas as pd

import reslim

SPEC = """
name = "spirals-tiny"
seed = 1
seeds = 2
n_train = [20, 40]
n_test = 200
[data]
source = "spirals"
turns = 2.1667
noise = 0.5
lift = 0.5
[model]
L = 4
M = 20
M0 = 100
alpha = 1.0
beta = { c = 0.25, n = 0.5 }
activation = "tanh"
init = "symmetric"
[train]
lr = 5.0
max_steps = { c = 40, n = 0.25 }
target_loss = 5e-3
backoff = 0.7
backoff_rise = 0.5
[measure]
checkpoints = 2
gram = true
delta = 0.05
"""


def test_spirals_gives_the_cli_results(cli, tmp_path):
    spec = tmp_path / "tiny.toml"
    spec.write_text(SPEC)
    res = reslim.spirals(spec, out=tmp_path / "py")
    subprocess.run([cli, "spirals", spec, "--out", tmp_path / "cli"], check=True, capture_output=True)
    want = pd.read_csv(tmp_path / "cli" / "runs.csv")
    assert len(res.runs) == 4 and list(res.runs.columns) == list(want.columns)
    numeric = [c for c in want.columns if want[c].dtype.kind in "if" and "second" not in c and c != "wall_s"]
    assert "test_error" in numeric
    for c in numeric:
        assert np.array_equal(res.runs[c].to_numpy(), want[c].to_numpy()), c
    assert res.report.is_file() and "fit" in res.summary or res.summary
    # A second call reuses every run.
    again = reslim.spirals(spec, out=tmp_path / "py")
    pd.testing.assert_frame_equal(again.runs[numeric], res.runs[numeric])
