"""Auto-labels: only with a promoted model of the current embedder; accepted ones become auto events once."""

import numpy as np
import pandas as pd
from sklearn.datasets import make_blobs

from cv_dataops.core.storage import LocalStorage
from cv_dataops.embeddings.vectors import Vectors
from cv_dataops.labels.acceptance import AcceptanceSettings
from cv_dataops.labels.auto_labelling import auto_label, candidates
from cv_dataops.labels.promotion import PromotionSettings
from cv_dataops.labels.registry import ModelRegistry
from cv_dataops.labels.store import LabelStore
from cv_dataops.labels.training import train_label_model


def test_accepted_auto_labels_are_appended_once(tmp_path):
    x, y = make_blobs(n_samples=240, centers=3, n_features=8, cluster_std=1.0, random_state=1)
    ids = [f"img-{i:04d}" for i in range(240)]
    vectors = Vectors("emb-1", ids, ["b1"] * 240, x.astype(np.float32))
    audited = pd.DataFrame({"image_id": ids[:160], "label": [f"c{k}" for k in y[:160]], "status": "human",
                            "labels_version": 1})
    registry = ModelRegistry(LocalStorage(tmp_path / "models"))
    assert auto_label(registry, audited, vectors, ids[160:], AcceptanceSettings()).reason.startswith("no label model")
    train_label_model(audited, vectors, registry, promotion=PromotionSettings(min_holdout=10), holdout_fraction=0.2,
                      labels_version=1, taxonomy_version="t")
    todo = candidates(ids, audited)
    assert todo == ids[160:]
    result = auto_label(registry, audited, vectors, todo, AcceptanceSettings(precision=0.95))
    accepted = result.decisions[result.decisions["decision"] == "auto"]
    assert len(result.decisions) == 80 and len(accepted) == len(result.events) > 40
    truth = dict(zip(ids, [f"c{k}" for k in y], strict=True))
    assert np.mean([truth[e.image_id] == e.label for e in result.events]) >= 0.95
    store = LabelStore(LocalStorage(tmp_path / "data"))
    version = store.append(result.events)
    assert store.append(auto_label(registry, audited, vectors, todo, AcceptanceSettings(precision=0.95)).events) \
        == version  # the same model, threshold and labels: nothing new
    other = Vectors("emb-2", ids, ["b1"] * 240, x.astype(np.float32))
    assert "nothing auto-labelled" in auto_label(registry, audited, other, todo, AcceptanceSettings()).reason
