import os
import subprocess
import sys

import pytest


def test_the_python_example_runs_top_to_bottom(repo, tmp_path):
    pytest.importorskip("matplotlib")
    env = dict(os.environ, MPLBACKEND="Agg")
    p = subprocess.run(
        [sys.executable, repo / "examples" / "python" / "quickstart.py", tmp_path],
        cwd=repo, env=env, capture_output=True, text=True, timeout=600,
    )
    assert p.returncode == 0, p.stderr
    assert "distance of the outputs to the linear limit" in p.stdout
    for f in ["errors_vs_D.png", "distance_to_linear_limit.png", "quick/errors.csv", "quick/report.md"]:
        assert (tmp_path / f).is_file(), f
