#!/usr/bin/env bash
# The reference tools the benchmarks compare against, each in its own virtual environment (their pins never touch
# ours). Usage: bench/setup_reference.sh [DIR]  (default bench/.reference); prints the Python to pass as
# --reference-python (CleanVision). Evidently (the drift benchmark's reference) goes beside it, in DIR/../.evidently
# (default bench/.evidently): Evidently 0.7 needs pandas < 3, which CleanVision's environment does not pin.
set -euo pipefail
dir=${1:-"$(dirname "$0")/.reference"}
[ -x "$dir/bin/python" ] || python3 -m venv "$dir"
"$dir/bin/python" -m pip install --quiet --upgrade pip
"$dir/bin/python" -m pip install --quiet "cleanvision==0.3.7"
evidently="$(dirname "$dir")/.evidently"
[ -x "$evidently/bin/python" ] || python3 -m venv "$evidently"
"$evidently/bin/python" -m pip install --quiet --upgrade pip
"$evidently/bin/python" -m pip install --quiet "evidently==0.7.23" "pandas<3"
echo "$dir/bin/python"
