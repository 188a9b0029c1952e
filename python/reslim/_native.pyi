# Type hints of the extension module (python/src/lib.rs). Use the functions of
# `reslim` instead: they wrap these with validation, docs and tables.
from os import PathLike
from typing import Any, Callable, Dict, Optional, Union

import numpy as np

_Path = Union[str, "PathLike[str]"]

def train(
    spec_path: Optional[_Path],
    overrides_json: str,
    init: Optional[Dict[str, np.ndarray]] = ...,
    out: Optional[_Path] = ...,
    progress: Optional[Callable[[float, float, str], None]] = ...,
) -> Dict[str, Any]: ...
def sweep(
    spec_path: Optional[_Path],
    spec_json: Optional[str],
    out: Optional[_Path] = ...,
    jobs: Optional[int] = ...,
    redo_stale: bool = ...,
    report_only: bool = ...,
    max_tasks: Optional[int] = ...,
    progress: Optional[Callable[[float, float, str], None]] = ...,
    shard: Optional[str] = ...,
) -> Dict[str, Any]: ...
def limit(spec_json: str, out: Optional[_Path] = ...) -> Dict[str, Any]: ...
def spirals(spec_path: _Path, out: _Path, redo_stale: bool = ...) -> str: ...
def version() -> str: ...
