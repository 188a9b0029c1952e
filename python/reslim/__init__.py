"""reslim: scaled deep residual networks and their large-scale limits, from Python.

The engine is reslim's Rust library (the extension module ``reslim._native``); this
package gives it NumPy arrays and pandas tables::

    import reslim
    run = reslim.train(L=4, M=8, D=8, steps=3)
    run.losses                      # (K,) float64
    sw = reslim.sweep("experiments/quick.toml", out="runs/quick")
    sw.errors                       # the tidy errors.csv as a DataFrame
    lim = reslim.linear_limit(x, y, steps=15, lr=1.0)

Specs are the TOML files of the command line (``docs/specs.md``), given as a path, a
dict, or keywords; they are checked by the same code, with the same messages. Results are
those of the command line, bit for bit. The GIL is released while Rust computes, and
Ctrl-C stops the work at its next safe point (a sweep keeps every finished task; call it
again to resume).
"""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np

from . import _native
from ._progress import Progress, callback as _progress
from ._tables import from_columns, have_pandas, read_csv
from .errors import (
    BusyError,
    DataError,
    DivergenceError,
    MemoryLimitError,
    ReslimError,
    SpecError,
    StaleResultsError,
)

__version__ = _native.version()

__all__ = [
    "train",
    "sweep",
    "limit",
    "linear_limit",
    "spirals",
    "load_run",
    "load_sweep",
    "Run",
    "SweepResult",
    "LimitResult",
    "SpiralsResult",
    "ReslimError",
    "SpecError",
    "DataError",
    "DivergenceError",
    "MemoryLimitError",
    "StaleResultsError",
    "BusyError",
]

PathLike = Union[str, "os.PathLike[str]"]

#: The arrays of ``train(init=...)`` and their layouts (those of the NPY files of an
#: ``--init-npy`` directory, ``shared/reference/README.md``).
INIT_LAYOUT = {
    "X": "(d_in, N)",
    "Y": "(d_out, N)",
    "WE": "(D, d_in)",
    "WU": "(D, d_out)",
    "U": "(L, D, M)",
    "V": "(L, D, M)",
}


@dataclass
class Run:
    """One trained network. Record ``k`` is the network after ``k`` GD updates.

    Attributes:
        losses: ``(K,)`` training loss at each step.
        outputs: ``(K, d_out, N)`` network outputs on the training inputs.
        h_last: ``(K, D, N)`` the last hidden state h_L (None with ``record_hidden=False``).
        metadata: the resolved config, parametrization table and numbers, seeds, timings,
            the engine that ran (``backend``), the one asked for
            (``backend_requested``) and every engine's estimated bytes (``memory``).
        out: the run directory, when one was written or read.
    """

    losses: np.ndarray
    outputs: np.ndarray
    h_last: Optional[np.ndarray]
    metadata: Dict[str, Any]
    out: Optional[Path] = None
    _layer_stats: Any = field(default=None, repr=False)

    @property
    def layer_stats(self) -> Any:
        """Per-layer coordinate statistics (``step, layer, rms_h, rms_branch, rms_du,
        rms_dv, rms_dh, rms_dbranch, rms_g``: RMS of h_l, of the branch output, of the
        weight changes, of the feature change, of the branch output's change since step
        0, of the backward signal dloss/dh_l) as a DataFrame (a dict of columns without pandas), when the run was
        asked for them (``layer_stats=True``); else None."""
        return self._layer_stats

    @property
    def backend(self) -> Optional[str]:
        """The engine that trained the run: ``"dense"``, ``"lowrank"`` or
        ``"regenerated"`` (``metadata["backend"]``; None for runs of reslim versions
        before the option)."""
        return self.metadata.get("backend")

    @property
    def memory(self) -> Optional[Dict[str, Any]]:
        """The memory estimate made before training (``metadata["memory"]``): the peak
        bytes under each engine (``dense``, ``lowrank``, ``regenerated``; None where the
        count overflows), ``requested``, ``chosen`` and ``available`` (``bytes``,
        ``source``)."""
        return self.metadata.get("memory")


@dataclass
class SweepResult:
    """A sweep's tidy results (those the CLI writes into its directory).

    Attributes:
        errors: ``errors.csv``, one row per (coupling, rep, L, M, D, step); None for a
            transfer sweep (``[reference] kind = "none"``).
        errors_rms: ``errors_rms.csv``, aggregated over repetitions (None likewise).
        fits: ``fits.json``, the fitted rates with their intervals; for a transfer sweep
            the optimal knob value per shape and its drift with L, M and D
            (``fits["drift"]``: exponent, 95% interval, verdict).
        report: path of ``report.md``.
        out: the sweep directory.
        summary: what this call did (``tasks``, ``ran``, ``skipped``, ``seconds``); empty
            for :func:`load_sweep`.
        errors_limit: ``errors_limit.csv`` for a sweep against the limit, else None.
        losses: transfer sweeps: ``losses.csv``, one row per run (rep, L, M, D, each knob,
            final loss, inf when it diverged, and the divergence); else None.
        optima: transfer sweeps: ``optima.csv``, the optimum of each repetition's curve.
        transfer: transfer sweeps: ``transfer.csv``, each shape's mean optimum and its
            95% interval.
        pscaling: ladder sweeps (``[grid] shapes = "zip"``): ``pscaling.csv``, per error
            space and shape the RMS error over repetitions, the geometric mean and its
            95% interval; ``fits["spaces"]`` then holds the exponent of the error in P over
            the whole ladder and each half (``fits``: slope, ``slope_ci95``, ``p_value``;
            ``verdict`` against the paper's -1/6 or -1/5). Else None.

    A shard's result (``sweep(..., shard="J/N")``) has only ``out`` and ``summary``.
    """

    errors: Any
    errors_rms: Any
    fits: Dict[str, Any]
    report: Optional[Path]
    out: Path
    summary: Dict[str, Any] = field(default_factory=dict)
    errors_limit: Any = None
    losses: Any = None
    optima: Any = None
    transfer: Any = None
    pscaling: Any = None


@dataclass
class LimitResult:
    """The large-D limit of a ResNet trained by GD (``docs/papers.md``).

    Attributes:
        outputs: ``(K, d_out, N)`` limit outputs f_k; ``outputs_se`` their Monte-Carlo
            standard errors (zeros for the exact linear solver).
        losses, losses_se: ``(K,)``.
        gamma_h, gamma_b, lam: ``(num_s, K N, K N)`` the correlations of the forward
            states, of the backward states, and Lambda, at each depth point
            (index ``k * N + n``).
        depth: ``(num_s,)`` the depth grid.
        report: the solver's report (method, errors, time).
    """

    outputs: np.ndarray
    outputs_se: np.ndarray
    losses: np.ndarray
    losses_se: np.ndarray
    gamma_h: np.ndarray
    gamma_b: np.ndarray
    lam: np.ndarray
    depth: np.ndarray
    report: Dict[str, Any]


@dataclass
class SpiralsResult:
    """The two-spirals experiment of the mean-field paper (``docs/papers.md``).

    Attributes:
        runs: ``runs.csv``, one row per (n_train, repetition).
        summary: ``summary.json``: the test error against n and its OLS fit.
        report: path of ``report.md``.
        out: the experiment directory.
    """

    runs: Any
    summary: Dict[str, Any]
    report: Path
    out: Path


def _fspath(p: Optional[PathLike]) -> Optional[str]:
    return None if p is None else os.fspath(p)


def _check_init(init: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    """The init arrays, checked for type, dtype and memory order (shapes are checked
    against each other by the engine)."""
    if not isinstance(init, Mapping):
        raise DataError(f"init: expected a dict of arrays {sorted(INIT_LAYOUT)}, got {type(init).__name__}")
    out = {}
    for name, a in init.items():
        if name not in INIT_LAYOUT:
            raise SpecError(f"init: unknown array {name!r} (expected X, Y, WE, WU, U, V)")
        layout = INIT_LAYOUT[name]
        if not isinstance(a, np.ndarray):
            raise DataError(
                f"init array '{name}': expected a numpy.ndarray of dtype float64, shape {layout}; got {type(a).__name__}"
            )
        if a.dtype != np.float64:
            raise DataError(
                f"init array '{name}': expected dtype float64, got {a.dtype} (shape {layout}; use .astype(np.float64))"
            )
        if not a.flags.c_contiguous:
            raise DataError(
                f"init array '{name}': expected C order (row-major), got a non-C-contiguous array of shape {a.shape} "
                f"(use numpy.ascontiguousarray)"
            )
        out[name] = a
    missing = [n for n in INIT_LAYOUT if n not in out]
    if missing:
        raise SpecError(f"init: missing array(s) {', '.join(missing)} (give all of X, Y, WE, WU, U, V)")
    return out


def _spec_dict(spec: Union[None, PathLike, Mapping[str, Any]]):
    """(path, dict) of a spec given as a path, a dict or nothing."""
    if spec is None:
        return None, {}
    if isinstance(spec, Mapping):
        return None, dict(spec)
    if isinstance(spec, (str, os.PathLike)):
        return _spec_file(os.fspath(spec)), {}
    raise SpecError(f"spec: expected a TOML path or a dict, got {type(spec).__name__}")


def _finite(fields: Any, where: str = "") -> None:
    """Refuses NaN and infinities in a spec dict, naming the field (JSON cannot carry
    them, and no spec field accepts them)."""
    if isinstance(fields, Mapping):
        for k, v in fields.items():
            _finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(fields, (list, tuple)):
        for i, v in enumerate(fields):
            _finite(v, f"{where}[{i}]")
    elif isinstance(fields, float) and not np.isfinite(fields):
        raise SpecError(f"spec field '{where}': must be finite (got {fields})")


def _spec_json(fields: Mapping[str, Any], what: str) -> str:
    _finite(fields)
    try:
        return json.dumps(dict(fields), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise SpecError(f"{what}: {e}") from None


def _spec_file(path: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such spec file")
    return path


def _merge(base: Dict[str, Any], over: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def train(
    spec: Union[None, PathLike, Mapping[str, Any]] = None,
    *,
    init: Optional[Mapping[str, np.ndarray]] = None,
    out: Optional[PathLike] = None,
    alpha: Optional[float] = None,
    backend: Optional[str] = None,
    progress: Progress = None,
    **overrides: Any,
) -> Run:
    """Trains one ResNet by full-batch gradient descent, as ``reslim train``.

    Args:
        spec: a TOML spec file (``docs/specs.md``), a dict of its fields, or None.
        init: start from these arrays instead of the seeded draws: a dict with ``X``
            (d_in, N), ``Y`` (d_out, N), ``WE`` (D, d_in), ``WU`` (D, d_out), ``U`` and
            ``V`` (L, D, M), all float64 in C order (the layout of the NPY interop).
        out: also write the run directory here (as ``reslim train --out``).
        alpha: the branch scale, shorthand for ``param={"alpha": alpha}``.
        backend: the engine of the GD step (the spec's ``backend``): ``"auto"``
            (default: the dense step, or the low-rank one where it is cheaper, or the
            regenerated one when the stored weights would not fit in 85% of the
            available memory), ``"dense"``, ``"lowrank"`` (the initial weights stored
            and only read, plus rank-N factors per step) or ``"regenerated"`` (the
            initial block weights regenerated from their seed inside each pass, never
            stored; not with ``init`` or ``init_npy``). Every engine gives the same
            records to rounding; ``layer_stats`` needs the dense one. The engine that
            ran is ``Run.backend``.
        progress: True shows a progress bar (tqdm if installed), a callable gets
            ``(step, steps, note)`` after each step; default: a bar when stderr is a
            terminal.
        **overrides: any spec field, overriding the file or dict: ``L``, ``M``, ``D``,
            ``N``, ``din``, ``dout``, ``steps``, ``lr``, ``preset`` (``chizat-julia``,
            ``chizat-python``, ``lazy``, ``standard``), ``activation`` (``tanh``,
            ``relu``, ``gelu``, ``softplus``, ``linear``), ``seed``, ``embed_seed``,
            ``data_seed``, ``dtype`` (``f64``/``f32``), ``record_hidden``,
            ``layer_stats``, ``init_npy``, ``backend``, ``param`` (a dict, merged key by
            key).

    Returns:
        a :class:`Run` with ``losses`` (K,), ``outputs`` (K, d_out, N), ``h_last``
        (K, D, N), ``metadata``, ``backend`` (the engine that ran), ``memory`` (every
        engine's estimated bytes) and, with ``layer_stats=True``, ``layer_stats``.

    Raises:
        SpecError: a bad field (named, with its value), an unknown ``backend``, or one
        the run cannot use; DataError: bad arrays or files; FileNotFoundError;
        DivergenceError (with ``step`` and ``layer``); MemoryLimitError (the run fits
        under no engine, each one's bytes named); KeyboardInterrupt on Ctrl-C.
    """
    path, fields = _spec_dict(spec)
    fields = _merge(fields, overrides)
    if backend is not None:
        fields = _merge(fields, {"backend": backend})
    if alpha is not None:
        fields = _merge(fields, {"param": {"alpha": alpha}})
    if "init_npy" in fields and fields["init_npy"] is not None:
        fields["init_npy"] = os.fspath(fields["init_npy"])
    arrays = None if init is None else _check_init(init)
    text = _spec_json(fields, "train arguments")
    r = _native.train(path, text, arrays, _fspath(out), _progress(progress, "train"))
    stats = r["layer_stats"]
    return Run(
        losses=r["losses"],
        outputs=r["outputs"],
        h_last=r["h_last"],
        metadata=json.loads(r["metadata"]),
        out=None if out is None else Path(out),
        _layer_stats=None if stats is None else from_columns(stats),
    )


def sweep(
    spec: Union[PathLike, Mapping[str, Any]],
    out: Optional[PathLike] = None,
    *,
    jobs: Optional[int] = None,
    redo_stale: bool = False,
    report_only: bool = False,
    max_tasks: Optional[int] = None,
    progress: Progress = None,
    shard: Optional[str] = None,
) -> SweepResult:
    """Runs or resumes a sweep over shapes, exactly as ``reslim sweep`` (same files).

    Args:
        spec: a sweep spec file (TOML, ``docs/specs.md``) or a dict of its fields.
        out: the sweep directory (default ``runs/<name>``). Finished tasks there are
            kept; records of a different spec raise StaleResultsError unless
            ``redo_stale``.
        jobs: parallel tasks (default: one per core).
        report_only: train nothing; collect, fit and report what is finished.
        max_tasks: stop after this many tasks (then call again to resume).
        progress: True shows a progress bar (tqdm if installed; the work of each
            finished task, in parameter-steps), a callable gets ``(done, total, task)``;
            default: a bar when stderr is a terminal.
        shard: ``"J/N"`` runs only the unfinished tasks of shard J of N (0-based), beside
            any other processes working on other shards of ``out`` (as ``reslim sweep
            --shard``); nothing is collected then: the result holds only ``summary``,
            and a later call without ``shard`` (or ``report_only=True``) writes the
            tables and the report.

    Returns:
        a :class:`SweepResult` (``errors``, ``errors_rms``, ``fits``, ``report``).

    Ctrl-C stops within about a second (at the next GD step), keeps every finished
    task and raises KeyboardInterrupt; calling ``sweep`` again resumes.
    """
    if isinstance(spec, Mapping):
        path, text = None, _spec_json(spec, "sweep spec")
    elif isinstance(spec, (str, os.PathLike)):
        path, text = _spec_file(os.fspath(spec)), None
    else:
        raise SpecError(f"spec: expected a TOML path or a dict, got {type(spec).__name__}")
    r = _native.sweep(path, text, _fspath(out), jobs, redo_stale, report_only, max_tasks, _progress(progress, "sweep"), shard)
    summary = {k: v for k, v in r.items() if k not in ("out", "report")}
    if shard is not None:
        return SweepResult(errors=None, errors_rms=None, fits={}, report=None, out=Path(r["out"]), summary=summary)
    res = load_sweep(r["out"])
    res.summary = summary
    return res


def load_sweep(out: PathLike) -> SweepResult:
    """The results of a sweep directory, without running anything."""
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"{out}: no such sweep directory")
    fits_path = out / "fits.json"
    if not fits_path.is_file():
        raise FileNotFoundError(f"{fits_path}: no such file (has the sweep been collected? run reslim.sweep)")
    with open(fits_path) as f:
        fits = json.load(f)
    def optional(name: str) -> Any:
        p = out / name
        return read_csv(p) if p.is_file() else None

    if (out / "losses.csv").is_file():
        return SweepResult(
            errors=None,
            errors_rms=None,
            fits=fits,
            report=out / "report.md",
            out=out,
            losses=read_csv(out / "losses.csv"),
            optima=optional("optima.csv"),
            transfer=optional("transfer.csv"),
        )
    return SweepResult(
        errors=read_csv(out / "errors.csv"),
        errors_rms=read_csv(out / "errors_rms.csv"),
        fits=fits,
        report=out / "report.md",
        out=out,
        errors_limit=optional("errors_limit.csv"),
        pscaling=optional("pscaling.csv"),
    )


def load_run(out: PathLike) -> Run:
    """A run directory written by ``reslim train --out`` or ``reslim.train(out=...)``."""
    out = Path(out)
    meta_path = out / "metadata.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: no such file (not a run directory)")
    with open(meta_path) as f:
        meta = json.load(f)

    def npy(name: str, required: bool = True) -> Optional[np.ndarray]:
        p = out / name
        if not p.is_file():
            if required:
                raise FileNotFoundError(f"{p}: no such file")
            return None
        return np.load(p)

    layers = out / "layers.csv"
    return Run(
        losses=npy("losses.npy"),
        outputs=npy("outputs.npy"),
        h_last=npy("hL.npy", required=False),
        metadata=meta,
        out=out,
        _layer_stats=read_csv(layers) if layers.is_file() else None,
    )


def _samples(name: str, a: Any, rows: str) -> list:
    a = np.asarray(a)
    if a.dtype.kind not in "fiu":
        raise DataError(f"{name}: expected a numeric array of shape {rows}, got dtype {a.dtype}")
    if a.ndim != 2:
        raise DataError(f"{name}: expected shape {rows}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise DataError(f"{name}: entries must be finite")
    return a.astype(np.float64).T.tolist()  # one list per sample


def limit(
    x: Optional[np.ndarray] = None,
    y: Optional[np.ndarray] = None,
    *,
    activation: str = "tanh",
    steps: int = 15,
    lr: float = 1.0,
    preset: str = "chizat-julia",
    param: Optional[Mapping[str, Any]] = None,
    method: str = "auto",
    num_s: Optional[int] = None,
    samples: Optional[int] = None,
    replicas: Optional[int] = None,
    seed: Optional[int] = None,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    din: Optional[int] = None,
    dout: Optional[int] = None,
    N: Optional[int] = None,
    data_seed: int = 1,
    out: Optional[PathLike] = None,
    name: str = "limit",
) -> LimitResult:
    """The large-D limit of the ResNet trained by GD on ``x``, ``y``, as ``reslim limit``.

    Args:
        x: inputs, shape (d_in, N); y: targets, shape (d_out, N) (the layout of
            ``train``'s X, Y). Without them: synthetic Gaussian data of ``din``,
            ``dout``, ``N`` and ``data_seed``.
        activation: ``linear`` is solved exactly (the ODE system); any other by Monte
            Carlo over single units (``samples`` units x ``replicas``, ``seed``).
        steps: K forward passes f_0 .. f_{K-1}; lr: the global learning rate.
        preset, param: the parametrization (the chizat-python family).
        method: ``auto``, ``exact`` (linear only) or ``monte-carlo``.
        num_s: depth grid points; rtol, atol: the exact solver's tolerances.
        out: also write ``reslim limit``'s output directory here.
    """
    if (x is None) != (y is None):
        raise SpecError("limit: give x and y together (or neither, for synthetic data)")
    if x is not None:
        xs = _samples("x", x, "(d_in, N)")
        ys = _samples("y", y, "(d_out, N)")
        if len(xs) != len(ys):
            raise DataError(f"y: expected N = {len(xs)} columns like x, got {len(ys)}")
        data = {"din": len(xs[0]), "dout": len(ys[0]), "N": len(xs), "x": xs, "y": ys}
    else:
        if din is None or dout is None or N is None:
            raise SpecError("limit: give x and y, or din, dout and N for synthetic data")
        data = {"din": din, "dout": dout, "N": N, "seed": data_seed}
    solver = {"method": method}
    for k, v in (("num_s", num_s), ("samples", samples), ("replicas", replicas), ("seed", seed), ("rtol", rtol), ("atol", atol)):
        if v is not None:
            solver[k] = v
    spec = {
        "name": name,
        "preset": preset,
        "activation": activation,
        "data": data,
        "steps": steps,
        "lr": lr,
        "solver": solver,
    }
    if param is not None:
        spec["param"] = dict(param)
    text = _spec_json(spec, "limit arguments")
    r = _native.limit(text, _fspath(out))
    return LimitResult(
        outputs=r["outputs"],
        outputs_se=r["outputs_se"],
        losses=r["losses"],
        losses_se=r["losses_se"],
        gamma_h=r["gamma_h"],
        gamma_b=r["gamma_b"],
        lam=r["lambda"],
        depth=r["depth"],
        report=json.loads(r["report"]),
    )


def linear_limit(x: Optional[np.ndarray] = None, y: Optional[np.ndarray] = None, **kwargs: Any) -> LimitResult:
    """:func:`limit` of linear blocks, solved exactly (the deterministic ODE system)."""
    kwargs.setdefault("activation", "linear")
    return limit(x, y, **kwargs)


def spirals(spec: PathLike, out: Optional[PathLike] = None, *, redo_stale: bool = False) -> SpiralsResult:
    """Runs or resumes the two-spirals experiment of a spec file (as ``reslim spirals``):
    test 0-1 error against the training-set size, with its OLS fit.

    ``out`` defaults to ``out/spirals``, as on the command line."""
    if not isinstance(spec, (str, os.PathLike)):
        raise SpecError(f"spec: expected the path of a spirals spec, got {type(spec).__name__}")
    spec = _spec_file(os.fspath(spec))
    if out is None:
        out = Path("out") / "spirals"
    report = _native.spirals(spec, os.fspath(out), redo_stale)
    out = Path(out)
    with open(out / "summary.json") as f:
        summary = json.load(f)
    return SpiralsResult(runs=read_csv(out / "runs.csv"), summary=summary, report=Path(report), out=out)
