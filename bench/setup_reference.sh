#!/usr/bin/env bash
# The reference tools the benchmarks compare against, each in its own virtual environment (their pins never touch
# ours). Usage: bench/setup_reference.sh [DIR]  (default bench/.reference); prints the Python to pass as
# --reference-python.
set -euo pipefail
dir=${1:-"$(dirname "$0")/.reference"}
[ -x "$dir/bin/python" ] || python3 -m venv "$dir"
"$dir/bin/python" -m pip install --quiet --upgrade pip
"$dir/bin/python" -m pip install --quiet "cleanvision==0.3.7"
echo "$dir/bin/python"
