"""Shared fixtures: the repository, the CLI binary built by `cargo test --release`, and
the authors' reference data (../shared/reference beside the repository)."""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def cli() -> Path:
    """The `reslim` binary of this checkout (built by the test command's cargo step)."""
    exe = Path(os.environ.get("RESLIM_CLI", REPO / "target" / "release" / "reslim"))
    if not exe.is_file():
        subprocess.run(["cargo", "build", "--release", "--bin", "reslim"], cwd=REPO, check=True)
    assert exe.is_file(), f"{exe}: the reslim binary is missing"
    return exe


@pytest.fixture(scope="session")
def reference() -> Path:
    assert SHARED.is_dir(), f"reference data missing: {SHARED} (shared/ must sit beside the repo)"
    return SHARED
