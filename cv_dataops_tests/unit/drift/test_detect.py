import numpy as np
import pandas as pd
import pytest

from cv_dataops.drift.detect import (
    DriftSample,
    DriftSettings,
    detect_drift,
    reference_scenarios,
    weighted_holm,
)
from cv_dataops.drift.statistics import DriftTest
from cv_dataops_tests.unit.drift.synthetic import properties, vectors

SETTINGS = DriftSettings(permutations=320)


def _reference(rng, n=400):
    return DriftSample(properties(n, rng), vectors(n, rng))


def _batch(rng, n=80, **shift):
    vector_args = {k: shift.pop(k) for k in ("weights", "new_centre", "shift") if k in shift}
    return DriftSample(properties(n, rng, start=10_000, **shift), vectors(n, rng, **vector_args))


@pytest.mark.parametrize("shift, cause", [
    ({"blur": 0.3}, "sharpness"),
    ({"light": -0.3}, "exposure"),
    ({"cameras": ("Pixel 7",)}, "camera"),
    ({"new_centre": 0.5}, "novel"),
    ({"weights": (0, 0, 0.5, 0.5, 0)}, "scenario"),
])
def test_a_planted_shift_is_detected_and_its_cause_ranked_first(shift, cause):
    rng = np.random.default_rng(7)
    result = detect_drift("b1", _batch(rng, **shift), _reference(rng), "snap-1", SETTINGS)
    assert result.drifted and result.severity == "large"
    assert result.causes[0].cause == cause, [c.text for c in result.causes]


def test_the_words_name_the_property_and_its_medians():
    rng = np.random.default_rng(8)
    result = detect_drift("b1", _batch(rng, blur=0.3), _reference(rng), "snap-1", SETTINGS)
    assert result.top_cause.startswith("sharpness dropped: median ") and "KS D = " in result.top_cause


def test_blur_that_also_lowers_the_noise_estimate_is_named_sharpness():
    rng = np.random.default_rng(15)
    batch = _batch(rng, blur=0.3)
    batch.properties["noise_sigma"] *= 0.2  # smoothing lowers the noise estimate as much as the sharpness
    result = detect_drift("b1", batch, _reference(rng), "snap-1", SETTINGS)
    assert [c.cause for c in result.causes[:2]] == ["sharpness", "sharpness"]
    noise = next(c for c in result.causes if c.feature == "noise_sigma")
    assert noise.text.startswith("noise dropped (smoothing")


def test_an_embedding_only_shift_is_unknown():
    rng = np.random.default_rng(9)
    result = detect_drift("b1", _batch(rng, shift=2.0), _reference(rng), "snap-1", SETTINGS)
    assert result.drifted
    named = [c.cause for c in result.causes]
    # the shift moves every image a little: embedding tests see it; if nothing else does, the answer is unknown
    assert result.unknown or "embedding" in named


def test_null_batches_are_rarely_flagged():
    """40 batches from the reference's distribution, every family of tests: at alpha 0.05 about 2 false alarms
    are expected (fewer: Holm is conservative under dependent tests); at most 6 (a binomial tail of 1.4 %)."""
    rng = np.random.default_rng(10)
    reference = _reference(rng, 300)
    reference.scenarios = reference_scenarios(reference.vectors)  # as the scenarios table would give them
    flagged = sum(detect_drift(f"null{seed}", _batch(np.random.default_rng(seed), n=40), reference, "snap-1",
                               DriftSettings(permutations=320, seed=seed)).drifted for seed in range(40))
    assert flagged <= 6


def test_no_reference_flags_nothing_and_says_why():
    rng = np.random.default_rng(11)
    result = detect_drift("b1", _batch(rng, blur=0.1), None, None, no_reference_reason="no curated snapshot yet")
    assert not result.drifted and result.severity == "none" and result.tests == []
    assert result.summary_table().to_pylist()[0]["reference_id"] is None
    table = result.atypicality_table()
    assert table.num_rows == 80 and table.column("embedding_atypicality").null_count == 80
    assert "no curated snapshot" in result.metadata()["note"]


def test_tables_conform_and_atypical_images_rank_first():
    rng = np.random.default_rng(12)
    batch = _batch(rng, n=60)
    novel = vectors(6, rng, new_centre=1.0)
    batch.vectors[:6] = novel
    result = detect_drift("b1", batch, _reference(rng), "snap-1", SETTINGS)
    assert result.drift_table().num_rows == len(result.tests)
    summary = result.summary_table("file:///r.html").to_pylist()[0]
    assert summary["severity"] in {"small", "large"} and summary["causes"].startswith(summary["top_cause"])
    table = result.atypicality_table().to_pandas()
    assert set(table.sort_values("rank")["image_id"].head(6)) == set(batch.properties["image_id"][:6])


def test_rows_must_be_aligned():
    rng = np.random.default_rng(13)
    with pytest.raises(ValueError, match="aligned"):
        DriftSample(properties(10, rng), vectors(9, rng))


def test_weighted_holm_gives_each_family_an_equal_share():
    def test(family, p):
        return DriftTest(family, "ks", f"{family}{p}", 0.0, p, 0.0, "ks_d")
    # 10 property tests and one embedding test: the embedding test's weight is 1/2, each property's 1/20
    tests = [test("properties", 0.5) for _ in range(10)] + [test("embedding", 0.02)]
    weighted_holm(tests, 0.05)
    assert tests[-1].drifted and abs(tests[-1].adjusted_p_value - 0.04) < 1e-12
    assert not any(t.drifted for t in tests[:-1])
    plain = [test("properties", 0.004), test("properties", 0.02)]
    weighted_holm(plain, 0.05)  # one family: plain Holm, 0.004 * 2 then max(0.008, 0.02 * 1)
    assert [t.adjusted_p_value for t in plain] == pytest.approx([0.008, 0.02])


def test_too_few_permutations_are_refused():
    with pytest.raises(ValueError, match="permutations"):
        DriftSettings(permutations=50)


def test_bad_property_values_do_not_crash():
    rng = np.random.default_rng(14)
    batch = _batch(rng, n=30)
    batch.properties["sharpness"] = np.nan
    batch.properties["brightness"] = "n/a"
    result = detect_drift("b1", batch, _reference(rng), "snap-1", SETTINGS)
    sharpness = next(t for t in result.tests if t.feature == "sharpness")
    assert not sharpness.ran and sharpness.missing_batch == 30
    assert isinstance(pd.DataFrame(result.atypicality), pd.DataFrame)


def test_a_large_reference_is_sampled_for_the_neighbour_tests():
    """The reference's own nearest neighbours cost n^2: beyond max_neighbour_reference an even seeded sample stands
    for it in novelty, scenario shares and atypicality, and a new scenario is still seen."""
    rng = np.random.default_rng(4)
    reference = _reference(rng, n=600)
    small = DriftSettings(permutations=320, max_neighbour_reference=150)
    result = detect_drift("b1", _batch(rng, new_centre=0.5), reference, "snap-1", small)
    novel = next(t for t in result.tests if t.feature == "novel_share")
    assert novel.n_reference == 150 and novel.drifted
    assert result.atypicality["embedding_atypicality"].notna().all()
    with pytest.raises(ValueError, match="at least 5"):
        DriftSettings(max_neighbour_reference=2)
