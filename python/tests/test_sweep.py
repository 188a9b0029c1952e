import os
import signal
import subprocess
import sys
import time
import tomllib

import numpy as np
import pandas as pd
import pytest

import reslim


@pytest.fixture(scope="module")
def cli_quick(cli, repo, tmp_path_factory):
    """The CLI's sweep of experiments/quick.toml."""
    out = tmp_path_factory.mktemp("cli") / "quick"
    subprocess.run([cli, "sweep", repo / "experiments" / "quick.toml", "--out", out], check=True, capture_output=True)
    return out


def same_tables(py_out, cli_out):
    for name in ["errors.csv", "errors_rms.csv"]:
        assert (py_out / name).read_bytes() == (cli_out / name).read_bytes(), name


def test_sweep_gives_the_cli_tables(repo, cli_quick, tmp_path):
    res = reslim.sweep(repo / "experiments" / "quick.toml", out=tmp_path / "py")
    assert res.summary["ran"] == res.summary["tasks"] == 192
    same_tables(tmp_path / "py", cli_quick)
    pd.testing.assert_frame_equal(res.errors, pd.read_csv(cli_quick / "errors.csv"))
    pd.testing.assert_frame_equal(res.errors_rms, pd.read_csv(cli_quick / "errors_rms.csv"))
    assert set(res.fits) >= {"joint", "slices"} and res.report.is_file()
    # Reading it back runs nothing and gives the same tables.
    again = reslim.load_sweep(tmp_path / "py")
    pd.testing.assert_frame_equal(again.errors, res.errors)
    # A second call resumes: every task is finished.
    res2 = reslim.sweep(repo / "experiments" / "quick.toml", out=tmp_path / "py")
    assert (res2.summary["ran"], res2.summary["skipped"]) == (0, 192)


def test_an_interrupted_sweep_resumes_from_a_dict_spec(repo, cli_quick, tmp_path):
    with open(repo / "experiments" / "quick.toml", "rb") as f:
        spec = tomllib.load(f)
    first = reslim.sweep(spec, out=tmp_path / "cut", max_tasks=50, jobs=2)
    assert 50 <= first.summary["ran"] < 192
    rest = reslim.sweep(spec, out=tmp_path / "cut")
    assert rest.summary["skipped"] == first.summary["ran"]
    assert rest.summary["ran"] == 192 - first.summary["ran"]
    same_tables(tmp_path / "cut", cli_quick)


# The default Ctrl-C handler, set explicitly: a process started in the background by a
# non-interactive shell (nohup, a CI runner) inherits SIGINT ignored, and Python then
# installs no KeyboardInterrupt handler.
SCRIPT = """
import signal, sys, reslim
signal.signal(signal.SIGINT, signal.default_int_handler)
try:
    reslim.sweep(sys.argv[1], out=sys.argv[2], jobs=2)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(3)
"""


def test_ctrl_c_stops_a_sweep_quickly_and_keeps_finished_tasks(repo, cli_quick, tmp_path):
    out = tmp_path / "sig"
    spec = repo / "experiments" / "quick.toml"
    p = subprocess.Popen([sys.executable, "-c", SCRIPT, str(spec), str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tasks = out / "tasks"
    t0 = time.time()
    while time.time() - t0 < 120:
        if tasks.is_dir() and sum(1 for d in tasks.iterdir() if (d / "records.json").is_file()) >= 20:
            break
        assert p.poll() is None, p.communicate()
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    sent = time.time()
    stdout, stderr = p.communicate(timeout=60)
    took = time.time() - sent
    assert p.returncode == 3 and "interrupted" in stdout, (p.returncode, stdout, stderr)
    print(f"stopped {took:.2f} s after SIGINT")
    assert took < 5.0, took  # "within about a second"; generous for a loaded CI machine
    kept = [d for d in tasks.iterdir() if (d / "records.json").is_file()]
    assert 20 <= len(kept) < 192
    res = reslim.sweep(spec, out=out)
    assert res.summary["skipped"] == len(kept) and res.summary["ran"] == 192 - len(kept)
    same_tables(out, cli_quick)


def test_bad_specs_and_stale_directories_raise(repo, tmp_path):
    with open(repo / "experiments" / "quick.toml", "rb") as f:
        spec = tomllib.load(f)
    with pytest.raises(reslim.SpecError, match="grid"):
        reslim.sweep(dict(spec, grid=dict(spec["grid"], M=[0, 4])), out=tmp_path / "bad")
    with pytest.raises(reslim.SpecError, match="steps"):
        reslim.sweep(dict(spec, steps=-3), out=tmp_path / "bad")
    with pytest.raises(reslim.SpecError, match="jobs"):
        reslim.sweep(spec, out=tmp_path / "bad", jobs=0)
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        reslim.sweep(tmp_path / "missing.toml")
    small = dict(spec, grid=dict(spec["grid"], M=[4, 8], D=[4, 8]), reps=1)
    reslim.sweep(small, out=tmp_path / "s")
    with pytest.raises(reslim.StaleResultsError, match="lr"):
        reslim.sweep(dict(small, lr=0.5), out=tmp_path / "s")
    redone = reslim.sweep(dict(small, lr=0.5), out=tmp_path / "s", redo_stale=True)
    assert redone.summary["ran"] == redone.summary["tasks"]


def test_tables_without_pandas_are_dicts_of_numpy_columns(repo, cli_quick, monkeypatch):
    import reslim._tables as tables

    monkeypatch.setattr(tables, "_pd", None)
    res = reslim.load_sweep(cli_quick)
    assert isinstance(res.errors, dict)
    want = pd.read_csv(cli_quick / "errors.csv")
    assert list(res.errors) == list(want.columns)
    for col in want.columns:
        got = res.errors[col]
        assert isinstance(got, np.ndarray) and len(got) == len(want)
        if want[col].dtype.kind in "if":
            assert np.allclose(got, want[col].to_numpy(), rtol=0, atol=0, equal_nan=True), col
        else:
            assert list(got) == list(want[col]), col


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_progress_reaches_a_callable_once_per_task_and_step(repo, tmp_path):
    with open(repo / "experiments" / "quick.toml", "rb") as f:
        spec = tomllib.load(f)
    small = dict(spec, grid=dict(spec["grid"], M=[4, 8], D=[4, 8]), reps=1)
    seen = []
    res = reslim.sweep(small, out=tmp_path / "p", progress=lambda done, total, task: seen.append((done, total, task)))
    assert len(seen) == res.summary["ran"] == res.summary["tasks"]
    assert seen[-1][0] == pytest.approx(seen[-1][1]) and all(isinstance(t, str) for _, _, t in seen)
    steps = []
    reslim.train(L=2, M=4, D=4, steps=5, progress=lambda k, n, note: steps.append((k, n, note)))
    assert [s[0] for s in steps] == [1, 2, 3, 4, 5] and steps[0][1] == 5 and "loss" in steps[0][2]
    # A failing callable does not stop the work.
    run = reslim.train(L=2, M=4, D=4, steps=3, progress=lambda *a: 1 / 0)
    assert run.losses.shape == (3,)


def test_shards_run_from_python_make_the_whole_sweep(repo, tmp_path):
    with open(repo / "experiments" / "quick.toml", "rb") as f:
        spec = tomllib.load(f)
    small = dict(spec, grid=dict(spec["grid"], M=[4, 8, 16], D=[4, 8]), reps=2)
    whole = reslim.sweep(small, out=tmp_path / "whole")
    ran = 0
    for j in range(3):
        part = reslim.sweep(small, out=tmp_path / "sharded", shard=f"{j}/3")
        assert part.errors is None and part.report is None
        ran += part.summary["ran"]
    assert ran == whole.summary["tasks"]
    done = reslim.sweep(small, out=tmp_path / "sharded", report_only=True)
    assert (tmp_path / "sharded" / "errors.csv").read_bytes() == (tmp_path / "whole" / "errors.csv").read_bytes()
    pd.testing.assert_frame_equal(done.errors, whole.errors)
    with pytest.raises(reslim.SpecError, match="shard"):
        reslim.sweep(small, out=tmp_path / "x", shard="3/3")


def test_a_transfer_sweep_gives_losses_optima_and_drift(tmp_path):
    spec = {
        "name": "tr",
        "preset": "chizat-julia",
        "steps": 6,
        "reps": 2,
        "couplings": ["coupled"],
        "data": {"din": 3, "dout": 2, "N": 4},
        "grid": {"L": [2, 4], "M": [8, 16], "D": [8], "lr": {"logspace": [1e-2, 1e4, 7]}},
        "reference": {"kind": "none"},
    }
    res = reslim.sweep(spec, out=tmp_path / "tr")
    assert res.errors is None and res.errors_rms is None
    assert len(res.losses) == 2 * 2 * 2 * 7
    assert list(res.losses.columns[:6]) == ["coupling", "rep", "L", "M", "D", "lr"]
    # The largest rates diverge: an infinite loss and the step where it happened.
    div = res.losses[res.losses["diverged"].notna()]
    assert len(div) > 0 and np.isinf(div["loss"]).all()
    assert {"opt", "ci_lo", "ci_hi", "censored"} <= set(res.transfer.columns)
    assert {d["axis"] for d in res.fits["drift"]} == {"L", "M"}  # D has one value: no M=D
    assert reslim.load_sweep(tmp_path / "tr").losses.equals(res.losses)


def test_a_ladder_sweep_gives_the_p_exponent_over_each_half(tmp_path):
    spec = {
        "name": "ladder",
        "preset": "chizat-python",
        "activation": "linear",
        "backend": "regenerated",
        "steps": 4,
        "lr": 0.1,
        "reps": 2,
        "read_steps": [3],
        "couplings": ["coupled"],
        "data": {"din": 3, "dout": 3, "N": 1, "x": [0.48, -0.13, 0.63], "y": [0.63, 0.27, -0.06]},
        "grid": {"shapes": "zip", "L": [4, 8, 16, 32], "M": [4, 8, 16, 32], "D": [4, 8, 16, 32]},
        "reference": {"kind": "limit"},
    }
    res = reslim.sweep(spec, out=tmp_path / "ladder")
    assert len(res.errors) == 4 * 2
    assert sorted(set(res.errors["P"])) == [64.0, 512.0, 4096.0, 32768.0]
    assert len(res.pscaling) == 2 * 4
    emb = [s for s in res.fits["spaces"] if s["space"] == "embedding"][0]
    assert [f["range"] for f in emb["fits"]] == ["whole", "lower half", "upper half"]
    whole = emb["fits"][0]["fit"]
    assert whole["slope"] < 0 and whole["slope_ci95"][0] <= whole["slope"] <= whole["slope_ci95"][1]
    assert abs(emb["paper"] + 1 / 6) < 1e-12
    assert reslim.load_sweep(tmp_path / "ladder").pscaling.equals(res.pscaling)
