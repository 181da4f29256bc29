"""One native thread per process, unless the user chose otherwise (each case in a fresh interpreter: the limits
are process-wide)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cv_dataops.core.threads import THREAD_VARIABLES

PROBE = """
import json, os
import numpy, scipy.linalg, sklearn.cluster  # the libraries load their pools first, as a step's imports do
from threadpoolctl import threadpool_info
from cv_dataops.core.threads import one_native_thread_per_process
changed = one_native_thread_per_process()
print(json.dumps({"changed": changed, "threads": sorted({p["num_threads"] for p in threadpool_info()}),
                  "environment": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}))
"""


def _probe(**variables):
    environment = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES} | variables
    out = subprocess.run([sys.executable, "-c", PROBE], env=environment, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_one_thread_in_this_process_and_the_ones_it_starts():
    seen = _probe()
    assert seen["changed"] and seen["threads"] == [1]
    assert seen["environment"] == {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def test_a_users_own_setting_stands():
    seen = _probe(OMP_NUM_THREADS="2")
    assert not seen["changed"] and seen["environment"] == {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": None}
