import subprocess

import numpy as np
import pytest

import reslim

X = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.7]])  # (d_in, N)
Y = np.array([[0.4, -0.2, 1.1]])  # (d_out, N)


def toml_samples(a):
    return "[" + ", ".join("[" + ", ".join(repr(float(v)) for v in col) + "]" for col in a.T) + "]"


def cli_limit(cli, tmp_path, activation, solver):
    spec = tmp_path / f"{activation}.toml"
    spec.write_text(
        f'name = "py"\nactivation = "{activation}"\nsteps = 4\nlr = 0.5\n[data]\ndin = 2\ndout = 1\nN = 3\n'
        f"x = {toml_samples(X)}\ny = {toml_samples(Y)}\n[solver]\n{solver}\n"
    )
    out = tmp_path / f"{activation}-out"
    subprocess.run([cli, "limit", spec, "--out", out], check=True, capture_output=True)
    return out


def test_linear_limit_is_the_cli_solve(cli, tmp_path):
    lim = reslim.linear_limit(X, Y, steps=4, lr=0.5, out=tmp_path / "py")
    out = cli_limit(cli, tmp_path, "linear", 'method = "exact"')
    assert lim.outputs.shape == (4, 1, 3) and lim.gamma_h.shape[1:] == (12, 12)
    for name, got in [("outputs", lim.outputs), ("losses", lim.losses), ("gamma_h", lim.gamma_h), ("gamma_b", lim.gamma_b), ("lambda", lim.lam), ("depth", lim.depth)]:
        assert np.array_equal(got, np.load(out / f"{name}.npy")), name
        assert np.array_equal(got, np.load(tmp_path / "py" / f"{name}.npy")), name
    assert np.all(lim.outputs_se == 0) and lim.losses[-1] < lim.losses[0]


def test_nonlinear_limit_is_the_cli_solve(cli, tmp_path):
    lim = reslim.limit(X, Y, activation="tanh", steps=4, lr=0.5, samples=200, replicas=2, num_s=11, seed=3)
    out = cli_limit(cli, tmp_path, "tanh", "samples = 200\nreplicas = 2\nnum_s = 11\nseed = 3")
    assert np.array_equal(lim.outputs, np.load(out / "outputs.npy"))
    assert np.array_equal(lim.outputs_se, np.load(out / "outputs_se.npy"))
    assert lim.outputs_se.max() > 0


def test_limit_arguments_are_checked():
    with pytest.raises(reslim.DataError, match="x: expected shape"):
        reslim.linear_limit(X.ravel(), Y, steps=3)
    with pytest.raises(reslim.DataError, match="N = 3"):
        reslim.linear_limit(X, Y[:, :2], steps=3)
    with pytest.raises(reslim.SpecError, match="steps"):
        reslim.linear_limit(X, Y, steps=0)
    with pytest.raises(reslim.SpecError, match="x and y"):
        reslim.linear_limit(X, None, steps=3)
    with pytest.raises(reslim.SpecError, match="method"):
        reslim.limit(X, Y, activation="tanh", method="exact", steps=3)
