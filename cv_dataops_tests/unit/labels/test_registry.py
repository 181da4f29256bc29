"""The label-model registry: save, list, load, promote, on a local folder and on a real S3 API (moto server)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from cv_dataops.labels.model import LabelModel
from cv_dataops.labels.registry import ModelRegistry, RegistryError


@pytest.fixture(scope="module")
def fitted():
    x, y = make_blobs(n_samples=120, centers=3, n_features=6, random_state=0)
    return x, LabelModel(calibration="none").fit(x, np.array(["a", "b", "c"])[y])


def test_round_trip_list_and_promote(storage, fitted):
    x, model = fitted
    registry = ModelRegistry(storage)
    assert registry.list() == [] and registry.promoted() is None
    first = registry.save(model, {"cv_accuracy": 0.91, "calibration_error": 0.03, "embedder_version": "1-abc",
                                  "labels_version": 4})
    second = registry.save(model, {"cv_accuracy": 0.93, "embedder_version": "1-abc", "labels_version": 5})
    assert (first, second) == ("v0001", "v0002")
    listed = registry.list()
    assert [v.version for v in listed] == ["v0001", "v0002"]
    metadata = listed[0].metadata
    assert metadata["classes"] == ["a", "b", "c"] and metadata["labels_version"] == 4
    assert metadata["trained_at"] and metadata["sklearn_version"]
    loaded = registry.load(first)
    assert (loaded.predict_proba(x) == model.predict_proba(x)).all()

    registry.promote(first, "first model beats chance")
    record = registry.promote(second, "not worse on the holdout")
    assert record.previous == "v0001"
    assert registry.promoted().version == "v0002"
    assert [(p.version, p.reason) for p in registry.promotions()] == [
        ("v0001", "first model beats chance"), ("v0002", "not worse on the holdout")]


def test_a_model_pickled_under_another_scikit_learn_is_refused(tmp_path, fitted):
    _, model = fitted
    registry = ModelRegistry(str(tmp_path / "models"))
    version = registry.save(model, {})
    path = tmp_path / "models" / version / "metadata.json"
    metadata = json.loads(path.read_text())
    path.write_text(json.dumps(metadata | {"sklearn_version": "0.24.2"}))
    with pytest.raises(RegistryError, match=r"saved with scikit-learn 0\.24\.2, this environment has"):
        registry.load(version)


def test_a_changed_model_file_is_refused(tmp_path, fitted):
    _, model = fitted
    registry = ModelRegistry(str(tmp_path / "models"))
    version = registry.save(model, {})
    (tmp_path / "models" / version / "model.pkl").write_bytes(b"not the model")
    with pytest.raises(RegistryError, match="sha256 differs"):
        registry.load(version)


def test_unknown_versions_and_bad_metadata_are_one_line(tmp_path, fitted):
    _, model = fitted
    registry = ModelRegistry(str(tmp_path / "models"))
    registry.save(model, {})
    with pytest.raises(RegistryError, match=r"no label model version 'v0009'.*versions: v0001"):
        registry.load("v0009")
    with pytest.raises(RegistryError, match="no label model version"):
        registry.promote("../etc", "why not")
    with pytest.raises(RegistryError, match="needs a reason"):
        registry.promote("v0001", " ")
    with pytest.raises(RegistryError, match="JSON values"):
        registry.save(model, {"when": object()})
    assert [v.version for v in registry.list()] == ["v0001"]


def test_an_unfinished_save_is_not_listed_and_its_number_not_reused(tmp_path, fitted):
    _, model = fitted
    registry = ModelRegistry(str(tmp_path / "models"))
    (tmp_path / "models" / "v0001").mkdir(parents=True)
    (tmp_path / "models" / "v0001" / "model.pkl").write_bytes(b"crashed before its metadata")
    assert registry.list() == []
    assert registry.save(model, {}) == "v0002"
