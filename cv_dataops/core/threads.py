"""One native compute thread per process: cv-dataops spreads work over processes (a step each, a quality worker
pool), so the BLAS and OpenMP pools of numpy, SciPy and scikit-learn, which default to one thread per core in every
process, oversubscribe the machine. On 2 cores, `cv-dataops run` over 1,000 CIFAR-10 photos took 65.4 s (117 CPU-s)
with the libraries' defaults and 23.6 s (23 CPU-s) with one thread per process (docs/benchmarks.md, `threads`).

A team that sets any of the libraries' own variables (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ...) keeps
its choice: nothing is changed then.
"""

from __future__ import annotations

import os
from typing import Any

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMEXPR_NUM_THREADS")
_limits: Any = None  # keeps threadpoolctl's limits in force in this process


def one_native_thread_per_process() -> bool:
    """Give the processes started from here one BLAS/OpenMP thread each (through the variables the libraries read
    when they load), and this process too (through threadpoolctl, as its libraries are loaded already). Returns
    whether it did: False when any of the variables was set by the user, whose setting then stands."""
    global _limits
    if any(name in os.environ for name in THREAD_VARIABLES):
        return False
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    from threadpoolctl import threadpool_limits

    _limits = threadpool_limits(limits=1)
    return True
