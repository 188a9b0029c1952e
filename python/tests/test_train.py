import json

import numpy as np
import pytest

import reslim


def rel_err(a, b):
    """Max |a - b| / max(|b|, 1e-3 max|b|), as tests/reference.rs."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    scale = np.abs(b).max()
    return float((np.abs(a - b) / np.maximum(np.abs(b), 1e-3 * scale)).max())


def inputs(reference, case):
    d = reference / case / "inputs"
    return {name: np.load(d / f"{name}.npy") for name in ["X", "Y", "WE", "WU", "U", "V"]}


CASES = [
    ("chizat_julia_small", "chizat-julia", "tanh", 1.0),
    ("chizat_python_small", "chizat-python", "linear", 0.1),
]


@pytest.mark.parametrize("case,preset,activation,lr", CASES)
def test_reference_inputs_reproduce_the_authors_arrays(reference, case, preset, activation, lr):
    run = reslim.train(
        preset=preset, activation=activation, steps=15, lr=lr, init=inputs(reference, case)
    )
    expected = reference / case / "expected"
    for name, got in [("losses", run.losses), ("outputs", run.outputs), ("hL", run.h_last)]:
        want = np.load(expected / f"{name}.npy")
        assert got.dtype == np.float64 and got.shape == want.shape, name
        assert rel_err(got, want) < 1e-12, (name, rel_err(got, want))
    # The same run from the NPY directory (the CLI's --init-npy) gives the same bits.
    again = reslim.train(preset=preset, activation=activation, steps=15, lr=lr, init_npy=reference / case / "inputs")
    assert np.array_equal(again.losses, run.losses) and np.array_equal(again.h_last, run.h_last)
    assert run.metadata["config"]["init_arrays"]["U"] == list(np.load(reference / case / "inputs" / "U.npy").shape)


def test_train_returns_arrays_metadata_and_layer_stats(tmp_path):
    run = reslim.train(L=4, M=8, D=6, N=3, din=2, dout=2, steps=3, layer_stats=True, alpha=0.5, out=tmp_path / "run")
    assert run.losses.shape == (3,) and run.outputs.shape == (3, 2, 3) and run.h_last.shape == (3, 6, 3)
    assert run.losses[-1] < run.losses[0]
    cfg = run.metadata["config"]
    assert cfg["dims"] == {"L": 4, "M": 8, "D": 6, "din": 2, "dout": 2, "N": 3}
    assert run.metadata["resolved"] and cfg["param"]["alpha"] == 0.5
    stats = run.layer_stats
    assert list(stats.columns) == ["step", "layer", "rms_h", "rms_branch", "rms_du", "rms_dv", "rms_dh", "rms_dbranch", "rms_g"]
    assert (stats[stats.step == 0].rms_dh == 0).all() and (stats[(stats.step == 2) & (stats.layer > 0)].rms_dh > 0).all()
    assert len(stats) == 3 * 5  # steps x (L + 1)
    # The run directory holds the same numbers, and load_run reads them back.
    back = reslim.load_run(tmp_path / "run")
    assert np.array_equal(back.losses, run.losses) and np.array_equal(back.h_last, run.h_last)
    for col in stats.columns:
        assert np.allclose(back.layer_stats[col], stats[col], rtol=1e-12, equal_nan=True), col
    with open(tmp_path / "run" / "metadata.json") as f:
        assert json.load(f)["config"] == cfg
    # A spec dict, then keywords over it; a TOML file the same way.
    spec = tmp_path / "s.toml"
    spec.write_text('L = 4\nM = 8\nD = 6\nN = 3\ndin = 2\ndout = 2\nsteps = 3\n[param]\nalpha = 0.5\n')
    for r in [reslim.train(spec), reslim.train({"L": 4, "M": 8, "D": 6, "N": 3, "din": 2, "dout": 2, "steps": 2}, steps=3, alpha=0.5)]:
        assert np.array_equal(r.losses, run.losses)


def test_bad_fields_name_the_field_and_value():
    for kwargs, words in [
        (dict(L=-1), ["'L'", "-1"]),
        (dict(M=0), ["'M'", "0"]),
        (dict(preset="nope"), ["'preset'", "nope"]),
        (dict(activation="sigmoidal"), ["'activation'", "sigmoidal"]),
        (dict(lr=float("nan")), ["'lr'", "nan"]),
        (dict(Lx=3), ["Lx"]),
        (dict(dtype="f16"), ["'dtype'", "f16"]),
    ]:
        with pytest.raises(reslim.SpecError) as e:
            reslim.train(**kwargs)
        assert isinstance(e.value, ValueError)
        for w in words:
            assert w in str(e.value), (kwargs, str(e.value))


def test_missing_files_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.toml"):
        reslim.train(tmp_path / "nothere.toml")
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        reslim.load_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="nothere"):
        reslim.load_sweep(tmp_path / "nothere")


def test_bad_init_arrays_name_the_array_and_what_was_expected(reference):
    good = inputs(reference, "chizat_julia_small")
    cases = [
        ("U", np.ascontiguousarray(good["U"][:, :, :-1]), ["'V'", "(L, D, M)"]),  # named by V
        ("WE", np.ascontiguousarray(good["WE"][:-1]), ["'WE'", "(D, d_in)"]),
        ("Y", np.ascontiguousarray(good["Y"][:, :-1]), ["'Y'", "N ="]),
        ("X", good["X"].astype(np.float32), ["'X'", "float64", "float32"]),
        ("V", np.asfortranarray(good["V"]), ["'V'", "C order"]),
        ("WU", good["WU"].tolist(), ["'WU'", "numpy.ndarray"]),
        ("X", good["X"].ravel(), ["'X'", "(d_in, N)"]),
    ]
    for name, bad, words in cases:
        init = dict(good, **{name: bad})
        with pytest.raises(ValueError) as e:
            reslim.train(init=init, steps=2)
        assert isinstance(e.value, reslim.DataError), (name, type(e.value))
        for w in words:
            assert w in str(e.value), (name, str(e.value))
    nan = dict(good, X=good["X"].copy())
    nan["X"][1, 2] = np.nan
    with pytest.raises(reslim.DataError, match="'X'.*not finite"):
        reslim.train(init=nan, steps=2)
    with pytest.raises(reslim.SpecError, match="missing array.*V"):
        reslim.train(init={k: v for k, v in good.items() if k != "V"})
    with pytest.raises(reslim.SpecError, match="'M'.*disagrees"):
        reslim.train(init=good, M=3)


def test_divergence_raises_with_step_and_layer():
    with pytest.raises(reslim.DivergenceError) as e:
        reslim.train(preset="standard", activation="linear", lr=1e6, steps=30, L=4, M=8, D=8)
    assert e.value.step is not None and e.value.step >= 1
    assert f"step {e.value.step}" in str(e.value)
    assert isinstance(e.value, ArithmeticError)


def test_backends_give_the_dense_records_and_name_the_engine(tmp_path, monkeypatch):
    # Block weights (196 kB) outweigh the low-rank factors; the low-rank step is cheaper.
    kw = dict(L=4, M=64, D=48, N=3, din=3, dout=2, steps=4, lr=0.7, seed=5)
    dense = reslim.train(backend="dense", **kw)
    regen = reslim.train(backend="regenerated", out=tmp_path / "regen", **kw)
    assert np.allclose(regen.losses, dense.losses, rtol=1e-10, atol=0)
    for got, want in [(regen.outputs, dense.outputs), (regen.h_last, dense.h_last)]:
        assert rel_err(got, want) < 1e-10, rel_err(got, want)
    assert dense.backend == "dense" and regen.backend == "regenerated"
    assert regen.metadata["backend_requested"] == "regenerated" and regen.metadata["config"]["backend"] == "regenerated"
    assert all(regen.memory[e] > 0 for e in ["dense", "lowrank", "regenerated"])
    assert regen.memory["regenerated"] < regen.memory["dense"] < regen.memory["lowrank"]
    back = reslim.load_run(tmp_path / "regen")
    assert back.backend == "regenerated" and np.array_equal(back.h_last, regen.h_last)
    # auto: the low-rank step (cheaper here); the regenerated one when the stored
    # weights do not fit; refused when nothing fits, naming every engine's bytes.
    assert reslim.train(**kw).backend == "lowrank"
    monkeypatch.setenv("RESLIM_MEMORY_LIMIT", "200K")
    auto = reslim.train(**kw)
    assert auto.backend == "regenerated" and auto.metadata["backend_requested"] == "auto"
    assert np.allclose(auto.losses, dense.losses, rtol=1e-10, atol=0)
    monkeypatch.setenv("RESLIM_MEMORY_LIMIT", "1K")
    with pytest.raises(reslim.MemoryLimitError, match="fits under no backend: dense needs .* regenerated needs"):
        reslim.train(**kw)
    monkeypatch.delenv("RESLIM_MEMORY_LIMIT")
    with pytest.raises(reslim.SpecError, match="'backend'.*nonsense"):
        reslim.train(backend="nonsense", **kw)
    with pytest.raises(reslim.SpecError, match="'backend'.*'layer_stats'.*regenerated"):
        reslim.train(backend="regenerated", layer_stats=True, **kw)
