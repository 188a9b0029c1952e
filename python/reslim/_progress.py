"""Progress display for long work: tqdm when installed, else one line on stderr."""

import sys
import time
from typing import Any, Callable, Optional, Union

Progress = Union[None, bool, Callable[[float, float, str], Any]]


class _Line:
    """A one-line progress display on stderr, redrawn at most 10 times a second."""

    def __init__(self, desc: str):
        self.desc = desc
        self.last = 0.0
        self.closed = False

    def __call__(self, done: float, total: float, note: str) -> None:
        if self.closed:
            return
        now = time.monotonic()
        # (The work of the last, smallest tasks can vanish in the rounding of the sum.)
        finished = done >= total * (1 - 1e-9)
        self.closed = finished
        if not finished and now - self.last < 0.1:
            return
        self.last = now
        pct = 100.0 * done / total if total > 0 else 100.0
        sys.stderr.write(f"\r{self.desc}: {pct:5.1f}% {note[:60]:<60}")
        if finished:
            sys.stderr.write("\n")
        sys.stderr.flush()


class _Tqdm:
    def __init__(self, desc: str):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=100.0, desc=desc, unit="%", bar_format="{l_bar}{bar}| {n:.1f}% [{elapsed}<{remaining}]{postfix}")

    def __call__(self, done: float, total: float, note: str) -> None:
        if self.bar.disable:
            return
        self.bar.n = min(100.0, 100.0 * done / total if total > 0 else 100.0)
        self.bar.set_postfix_str(note, refresh=False)
        self.bar.refresh()
        if done >= total * (1 - 1e-9):
            self.bar.close()


def callback(progress: Progress, desc: str) -> Optional[Callable[[float, float, str], Any]]:
    """The callable for ``progress``: None or False shows nothing; True shows a tqdm bar
    (or a line on stderr without tqdm); a callable gets ``(done, total, note)``. The
    default (None) shows progress when stderr is a terminal."""
    if callable(progress):
        return progress
    if progress is None:
        progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
    if not progress:
        return None
    try:
        return _Tqdm(desc)
    except ImportError:
        return _Line(desc)
