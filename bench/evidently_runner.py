"""Run by bench/drift_benchmark.py in an environment with evidently 0.7: Evidently's default embedding drift
(``EmbeddingsDriftMetric`` with no method: ``model(bootstrap=len(reference) < 1000)``) on every batch.

    <python with evidently> bench/evidently_runner.py FOLDER

FOLDER holds ``store.npy`` (variant, row, dimension), ``reference.npy`` and ``batches.json`` (per batch a list of
``[variant, rows]``); writes ``decisions.json`` (per batch: drift detected).
"""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from evidently.legacy.metrics.data_drift.embedding_drift_methods import model


def main() -> None:
    folder = Path(sys.argv[1])
    store = np.load(folder / "store.npy")
    reference = np.load(folder / "reference.npy")
    columns = [f"e{i}" for i in range(reference.shape[1])]
    method = model(bootstrap=len(reference) < 1000)   # EmbeddingsDriftMetric's default
    decisions = []
    for parts in json.loads((folder / "batches.json").read_text()):
        batch = np.vstack([store[variant][rows] for variant, rows in parts])
        _, detected, _ = method(pd.DataFrame(batch, columns=columns), pd.DataFrame(reference, columns=columns))
        decisions.append(bool(detected))
    (folder / "decisions.json").write_text(json.dumps(decisions))


if __name__ == "__main__":
    main()
