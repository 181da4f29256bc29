"""Training the label model: a holdout frozen once and never trained on, promotion on it, no new version for an
unchanged training set, and a new one when reviews add labels."""

import json

import numpy as np
import pandas as pd
from sklearn.datasets import make_blobs

from cv_dataops.core.storage import LocalStorage
from cv_dataops.embeddings.vectors import Vectors
from cv_dataops.labels.promotion import PromotionSettings
from cv_dataops.labels.registry import ModelRegistry
from cv_dataops.labels.training import HOLDOUT, frozen_holdout, train_label_model

SETTINGS = PromotionSettings(min_holdout=10, bootstrap_rounds=1000)


def _catalog(n=160, seed=0):
    x, y = make_blobs(n_samples=n, centers=3, n_features=8, cluster_std=1.0, random_state=seed)
    ids = [f"img-{i:04d}" for i in range(n)]
    vectors = Vectors("emb-1", ids, ["b1"] * n, x.astype(np.float32))
    audited = pd.DataFrame({"image_id": ids, "label": [f"c{k}" for k in y], "status": "human",
                            "labels_version": 1})
    return vectors, audited


def _train(registry, audited, vectors, version=1):
    return train_label_model(audited, vectors, registry, promotion=SETTINGS, holdout_fraction=0.2,
                             labels_version=version, taxonomy_version="t")


def test_first_model_is_promoted_over_chance_and_never_trained_on_the_holdout(tmp_path):
    vectors, audited = _catalog()
    registry = ModelRegistry(LocalStorage(tmp_path))
    outcome = _train(registry, audited, vectors)
    assert outcome.trained and outcome.decision["promote"] and outcome.promoted == "v0001"
    holdout = json.loads((tmp_path / HOLDOUT).read_text())["image_ids"]
    assert len(holdout) == outcome.holdout_items >= 10
    metadata = registry.metadata("v0001")
    assert metadata["training_items"] + len(holdout) == len(audited) and 0.9 < metadata["cv_accuracy"] <= 1


def test_unchanged_training_set_adds_no_version_and_new_reviews_do(tmp_path):
    vectors, audited = _catalog()
    registry = ModelRegistry(LocalStorage(tmp_path))
    _train(registry, audited, vectors)
    again = _train(registry, audited, vectors)
    assert (again.trained, again.version, len(registry.list())) == (False, "v0001", 1)
    reviewed = audited.copy()
    reviewed.loc[reviewed.index[:5], "status"] = "disputed"  # no longer verified: a different training set
    changed = _train(registry, reviewed, vectors, version=2)
    assert changed.trained and changed.version == "v0002" and len(registry.list()) == 2
    assert "holdout accuracy" in changed.reason  # compared with v0001, not with chance


def test_the_holdout_is_frozen_once(tmp_path):
    vectors, audited = _catalog()
    registry = ModelRegistry(LocalStorage(tmp_path))
    assert frozen_holdout(registry, audited.head(20), 0.2, 10, 1) is None  # too few yet: nothing stored
    first = frozen_holdout(registry, audited, 0.2, 10, 1)
    more = pd.concat([audited, audited.assign(image_id=audited["image_id"] + "-new")])
    assert frozen_holdout(registry, more, 0.2, 10, 2) == first


def test_too_few_labels_train_nothing(tmp_path):
    vectors, audited = _catalog()
    outcome = _train(ModelRegistry(LocalStorage(tmp_path)), audited.head(3), vectors)
    assert not outcome.trained and outcome.version is None and "no model trained" in outcome.reason
