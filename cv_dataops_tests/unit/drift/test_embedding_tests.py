import numpy as np

from cv_dataops.drift.embedding_tests import (
    accuracy_estimate,
    domain_classifier_test,
    mmd_test,
    model_tests,
    neighbour_picture,
    scenario_tests,
)
from cv_dataops_tests.unit.drift.synthetic import vectors

B = 199


def test_mmd_p_value_is_a_permutation_p_value_and_is_seeded():
    rng = np.random.default_rng(0)
    reference, batch = vectors(200, rng), vectors(40, rng, shift=3.0)
    result = mmd_test(reference, batch, permutations=B, seed=4)
    assert result.p_value == 1 / (B + 1)  # nothing permuted beats a large shift
    assert result.effect_size > 0
    again = mmd_test(reference, batch, permutations=B, seed=4)
    assert again.statistic == result.statistic and again.p_value == result.p_value
    null = mmd_test(reference, vectors(40, rng), permutations=B, seed=4)
    assert null.p_value > 0.01 and (null.p_value * (B + 1)) % 1 < 1e-9


def test_domain_classifier_separates_a_shift_and_not_a_null_batch():
    rng = np.random.default_rng(1)
    reference = vectors(200, rng)
    shifted = domain_classifier_test(reference, vectors(40, rng, shift=1.5), permutations=B)
    assert shifted.p_value == 1 / (B + 1) and shifted.effect_size > 0.7
    null = domain_classifier_test(reference, vectors(40, rng), permutations=B)
    assert null.p_value > 0.01 and null.effect_size < 0.7


def test_embedding_tests_keep_their_level_on_null_batches():
    rng = np.random.default_rng(2)
    reference = vectors(150, rng)
    p_values = [test(reference, vectors(25, rng), permutations=99, seed=s).p_value
                for s in range(20) for test in (mmd_test, domain_classifier_test)]
    assert sum(p <= 0.05 for p in p_values) <= 6  # 40 null p-values; 2 expected at the level


def test_vectors_that_are_not_finite_are_counted_not_used():
    rng = np.random.default_rng(3)
    batch = vectors(30, rng)
    batch[:5] = np.nan
    result = mmd_test(vectors(100, rng), batch, permutations=B)
    assert result.missing_batch == 5 and result.n_batch == 25 and result.ran


def test_novel_images_and_scenario_shares():
    rng = np.random.default_rng(4)
    reference = vectors(400, rng)
    scenarios = np.argmin(((reference[:, None, :] - vectors.__globals__["CENTRES"][None]) ** 2).sum(-1), axis=1)
    new = scenario_tests(neighbour_picture(reference, vectors(60, rng, new_centre=0.4)), scenarios)[1]
    assert new.p_value < 1e-6 and new.details["batch_share"] > 0.3
    knocked_out = vectors(60, rng, weights=(0, 0, 0.5, 0.5, 0))
    shares = scenario_tests(neighbour_picture(reference, knocked_out), scenarios)[0]
    assert shares.p_value < 1e-6 and shares.effect_size > 0.4
    assert shares.details["shares"].loc["0", "batch"] == 0  # scenario 0 is gone


def test_atypicality_is_scale_free():
    rng = np.random.default_rng(5)
    reference, batch = vectors(300, rng), vectors(30, rng, new_centre=0.3)
    picture = neighbour_picture(reference, batch)
    score = picture.embedding_atypicality()
    far = picture.batch_nearest > picture.radius
    assert far.any() and score[far].min() >= 0.95 and np.median(score[~far]) < 0.8


def _calibrated(rng, n, peak, classes=3, allowed=(0, 1, 2)):
    """Probabilities a calibrated model would give, and labels drawn from them (so its accuracy is known)."""
    favourite = rng.choice(allowed, n)
    alpha = np.ones((n, classes))
    alpha[np.arange(n), favourite] = peak
    probabilities = np.array([rng.dirichlet(a) for a in alpha])
    labels = np.array([rng.choice(classes, p=p) for p in probabilities])
    return probabilities, labels


def test_model_outputs_and_accuracy_estimate():
    rng = np.random.default_rng(6)
    reference, labels = _calibrated(rng, 800, peak=12.0)
    like, like_labels = _calibrated(rng, 300, peak=12.0)
    estimate = accuracy_estimate(reference, labels, like)
    assert abs(estimate.batch_accuracy - np.mean(like.argmax(axis=1) == like_labels)) < 0.06
    batch, batch_labels = _calibrated(rng, 300, peak=3.0, allowed=(1, 2))  # less sure, and class 0 gone
    label_test, confidence_test = model_tests(reference, batch, ["cat", "dog", "car"])
    assert label_test.p_value < 1e-4 and confidence_test.p_value < 1e-6
    assert label_test.details["shares"].loc["cat", "batch"] < label_test.details["shares"].loc["cat", "reference"]
    harder = accuracy_estimate(reference, labels, batch)
    assert harder.batch_accuracy < harder.reference_accuracy - 0.1  # the model loses accuracy, and the report says so
    assert np.mean(batch.argmax(axis=1) == batch_labels) < harder.reference_accuracy - 0.1
    assert accuracy_estimate(reference, np.full(len(labels), -1), batch) is None
