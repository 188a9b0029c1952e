"""Tidy tables: pandas DataFrames when pandas is installed, else dicts of NumPy columns."""

import csv
from pathlib import Path
from typing import Any, Dict, Mapping

import numpy as np

try:  # pandas is optional
    import pandas as _pd
except ImportError:  # pragma: no cover - exercised where pandas is absent
    _pd = None


def have_pandas() -> bool:
    return _pd is not None


def _column(values):
    """A NumPy column: booleans (``true``/``false``), integers, else floats, else
    strings (empty cells are NaN)."""
    if values and all(v.lower() in ("true", "false") for v in values):
        return np.array([v.lower() == "true" for v in values])
    for kind in (int, float):
        try:
            if kind is float:
                return np.array([float(v) if v != "" else np.nan for v in values])
            return np.array([int(v) for v in values], dtype=np.int64)
        except ValueError:
            continue
    return np.array(values, dtype=object)


def read_csv(path: Path) -> Any:
    """The CSV file ``path`` as a DataFrame (pandas) or a dict of NumPy columns."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if _pd is not None:
        return _pd.read_csv(path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return {}
    header, body = rows[0], rows[1:]
    return {name: _column([r[i] for r in body]) for i, name in enumerate(header)}


def from_columns(columns: Mapping[str, np.ndarray]) -> Any:
    """A dict of equal-length columns as a DataFrame (pandas) or the dict itself."""
    if _pd is not None:
        return _pd.DataFrame(dict(columns))
    return dict(columns)
