"""What curation's rows hold: missing values, optional columns, and the vectors aligned with the rows.

**Alignment.** Every curation function that takes ``vectors`` alongside a frame reads ``vectors[i]`` as the
embedding of the frame's *i*-th row (by position, not by index label). :func:`~cv_dataops.curation.eligibility.eligible`
and :func:`~cv_dataops.curation.selection.select` keep the index labels of their input, so with a catalog frame on a
default ``RangeIndex`` and its vector matrix ``V``, ``V[frame.index.to_numpy()]`` are the vectors of any frame
derived from it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

UNLABELLED = "unlabelled"


def present(value: object) -> bool:
    """False for None, NaN and pandas' NA (and empty strings, which carry no label either)."""
    if value is None:
        return False
    try:
        if pd.isna(value):
            return False
    except (TypeError, ValueError):  # arrays and the like are values
        return True
    return not (isinstance(value, str) and value == "")


def json_scalar(value: object) -> object:
    """A JSON-ready scalar: numpy scalars to Python, missing to None."""
    if not present(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def column_values(frame: pd.DataFrame, name: str) -> list:
    """The column's values, or one None per row when the frame has no such column (optional columns)."""
    return frame[name].tolist() if name in frame.columns else [None] * len(frame)


def aligned_matrix(vectors: np.ndarray | None, n: int, what: str) -> np.ndarray:
    """``vectors`` as float32 (n, d), one row per frame row; a ValueError naming ``what`` otherwise."""
    if vectors is None:
        raise ValueError(f"{what}: vectors are required")
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or len(matrix) != n:
        raise ValueError(f"{what}: expected vectors of shape ({n}, d) aligned with the rows, got {matrix.shape}")
    return matrix

