"""The label-model family as drift_for_batch feeds it: reference probabilities only where the model cannot have
seen the label, the holdout's labels for the accuracy estimate, and a class knock-out seen through the model."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cv_dataops.drift.batch import PromotedModel, _with_model
from cv_dataops.drift.detect import DriftSample, DriftSettings, detect_drift
from cv_dataops.labels.model import LabelModel
from cv_dataops_tests.unit.drift import synthetic


def _labelled(n, rng, classes=(0, 1, 2, 3, 4), start=0):
    weights = np.zeros(5)
    weights[list(classes)] = 1
    x = synthetic.vectors(n, rng, weights=weights)
    labels = np.argmin(((x[:, None, :] - synthetic.CENTRES[None]) ** 2).sum(axis=2), axis=1)
    return synthetic.properties(n, rng, start=start), x, np.array([f"c{c}" for c in labels])


def test_reference_rows_the_model_may_have_seen_take_no_part():
    rng = np.random.default_rng(0)
    properties, x, labels = _labelled(300, rng)
    ids = properties["image_id"]
    trained, holdout = ids[:150], ids[150:200]             # 100 more never had a human label
    model = LabelModel().fit(x[:150], labels[:150])
    audited = pd.DataFrame({"image_id": list(trained) + list(holdout) + [ids[250]],
                            "label": list(labels[:200]) + [labels[250]],
                            "status": ["human"] * 200 + ["disputed"]})
    sample = _with_model(DriftSample(properties, x), PromotedModel(model, "v0001", list(holdout), audited), True)
    unseen = np.isfinite(sample.probabilities).all(axis=1)
    assert not unseen[:150].any() and unseen[150:200].all() and not unseen[250]
    assert unseen[200:250].all() and unseen[251:].all()
    classes = list(model.classes_)
    assert (sample.labels[150:200] == [classes.index(label) for label in labels[150:200]]).all()
    assert (sample.labels[:150] == -1).all() and (sample.labels[200:] == -1).all()
    # a batch whose labels the model trained on is masked the same way: in-sample confidence is no evidence
    batch = _with_model(DriftSample(properties, x), PromotedModel(model, "v0001", list(holdout), audited), False)
    assert (np.isfinite(batch.probabilities).all(axis=1) == unseen).all() and batch.labels is None


def test_a_class_knock_out_is_seen_by_the_model_family_with_an_accuracy_estimate():
    rng = np.random.default_rng(1)
    properties, x, labels = _labelled(400, rng)
    model = LabelModel().fit(x[:200], labels[:200])
    audited = pd.DataFrame({"image_id": properties["image_id"], "label": labels,
                            "status": ["human"] * 400})
    promoted = PromotedModel(model, "v0001", list(properties["image_id"][200:]), audited)
    reference = _with_model(DriftSample(properties, x), promoted, True)
    batch_properties, batch_x, _ = _labelled(100, rng, classes=(0, 1), start=1000)
    batch = _with_model(DriftSample(batch_properties, batch_x), promoted, False)
    result = detect_drift("b", batch, reference, "r", DriftSettings(permutations=400),
                          classes=[str(c) for c in model.classes_])
    tested = {t.feature: t for t in result.tests if t.family == "model"}
    assert tested["predicted_label"].ran and tested["predicted_label"].n_reference == 200
    assert tested["predicted_label"].drifted
    assert result.accuracy is not None and 0 <= result.accuracy.batch_accuracy <= 1
