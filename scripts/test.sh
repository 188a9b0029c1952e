#!/usr/bin/env bash
# The whole test suite, the README's test command: the Rust tests, then the Python
# package's (python/tests, pytest) against the package built and installed from this
# checkout into a virtual environment under target/pyenv (made on the first run; needs
# python3 >= 3.9 with venv and pip, and PyPI for numpy, pandas, pytest, matplotlib and
# maturin). Arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release "$@"
venv=target/pyenv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip -q --disable-pip-version-check)
t0=$(date +%s)
"${pip[@]}" install numpy pandas pytest matplotlib
# The README's install line, exactly as a user runs it.
"${pip[@]}" install ./python
echo "python package built and installed in $(($(date +%s) - t0)) s"
RESLIM_CLI="$PWD/target/release/reslim" "$venv/bin/python" -m pytest -q -p no:cacheprovider python/tests
