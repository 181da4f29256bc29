"""Curation: eligibility, diverse and balanced selection, leak-free splits, content-addressed snapshots, exports."""

from __future__ import annotations

import csv
import hashlib
import io
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs

from cv_dataops.curation.coverage import coverage
from cv_dataops.curation.eligibility import eligible
from cv_dataops.curation.selection import (
    allocate,
    k_center_greedy,
    proportional,
    select,
    shares_keeping_every_part,
)
from cv_dataops.curation.settings import CurationSettings
from cv_dataops.curation.snapshots import snapshot_manifest
from cv_dataops.curation.splits import leak_free_split, leakage, near_pairs
from cv_dataops.exports.coco import export_coco
from cv_dataops.exports.csv import export_csv
from cv_dataops.exports.imagefolder import export_imagefolder
from cv_dataops.exports.label_studio import export_label_studio, label_studio_config


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute_force_farthest_points(x, k, already=(), seed=0):
    """Farthest-point selection the slow, obvious way: every step scans every candidate against every pick."""
    x = np.asarray(x, dtype=np.float64)
    selected = list(already)
    picks = []
    if not selected:
        selected = picks = [int(np.random.default_rng(seed).integers(len(x)))]
    while len(picks) < k:
        best, best_distance = None, -1.0
        for candidate in range(len(x)):
            if candidate in selected:
                continue
            distance = min(np.linalg.norm(x[candidate] - x[s]) for s in selected)
            if distance > best_distance:
                best, best_distance = candidate, distance
        picks.append(best)
        if picks is not selected:
            selected.append(best)
    return np.array(picks)


# --- k-center greedy -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 7])
def test_k_center_greedy_matches_brute_force(seed):
    x = _unit(np.random.default_rng(seed).normal(size=(120, 6)))
    assert np.array_equal(k_center_greedy(x, 25, seed=seed), _brute_force_farthest_points(x, 25, seed=seed))
    already = np.array([3, 50, 99])
    picks = k_center_greedy(x, 20, already_selected=already, seed=seed)
    assert np.array_equal(picks, _brute_force_farthest_points(x, 20, already=already.tolist()))
    assert not set(picks) & set(already.tolist())


@pytest.mark.parametrize("seed", range(5))
def test_k_center_greedy_visits_every_blob_before_any_blob_twice(seed):
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(7, 24))) * 10
    vectors, blob = make_blobs(n_samples=[400, 150, 60, 30, 12, 6, 3], centers=centres, cluster_std=0.6,
                               random_state=seed)
    picks = k_center_greedy(_unit(vectors), 7, seed=seed)
    assert sorted(blob[picks].tolist()) == list(range(7))
    picks = k_center_greedy(_unit(vectors), 14, seed=seed)
    assert sorted(blob[picks[:7]].tolist()) == list(range(7))


def test_k_center_greedy_edge_cases():
    x = _unit(np.random.default_rng(0).normal(size=(5, 3)))
    assert k_center_greedy(x, 0).shape == (0,)
    assert sorted(k_center_greedy(x, 50).tolist()) == [0, 1, 2, 3, 4]  # capped at n
    assert sorted(k_center_greedy(x, 9, already_selected=np.array([1, 2])).tolist()) == [0, 3, 4]
    identical = np.ones((4, 3), np.float32)  # all distances zero: still four distinct picks
    assert sorted(k_center_greedy(identical, 4).tolist()) == [0, 1, 2, 3]


# --- eligibility ------------------------------------------------------------------------------------------------

def test_eligible_drops_unusable_and_non_kept_duplicates_with_reasons():
    images = pd.DataFrame({
        "image_id": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"],
        "uri": [f"/x/{i}.jpg" for i in "abcdefghij"],
        "is_unusable": [False, True, False, False, True, True, False, None, False, False],
        "group_id": [None, None, "g1", "g1", "g1", "g2", "g2", "g3", "g4", "g4"],
        "keep": [None, None, False, True, False, True, False, False, False, False],
    }, index=range(10, 20))
    kept, excluded = eligible(images)
    # d: g1's keep; g: stands in for g2's unusable keep; h: a group without keep; i: g4's smallest id
    assert kept.image_id.tolist() == ["a", "d", "g", "h", "i"]
    reasons = dict(zip(excluded.image_id, excluded.reason, strict=True))
    assert reasons == {"b": "unusable", "c": "duplicate of d", "e": "unusable", "f": "unusable",
                       "j": "duplicate of i"}
    assert kept.index.tolist() == [10, 13, 16, 17, 18]  # index labels kept, so vectors line up by label
    assert excluded.index.tolist() == [11, 12, 14, 15, 19]


def test_eligible_without_quality_or_duplicate_columns_keeps_everything():
    images = pd.DataFrame({"image_id": ["a", "b"], "uri": ["/a.png", "/b.png"]})
    kept, excluded = eligible(images)
    assert kept.image_id.tolist() == ["a", "b"] and excluded.empty and "reason" in excluded.columns


# --- selection --------------------------------------------------------------------------------------------------

def _labelled_pool(sizes, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    labels, vectors = [], []
    for number, (label, size) in enumerate(sizes.items()):
        centre = rng.normal(size=dim) * 3
        vectors.append(centre + rng.normal(size=(size, dim)))
        labels += [label] * size
    frame = pd.DataFrame({"image_id": [f"{i:064x}" for i in range(len(labels))],
                          "uri": [f"/pool/{i}.jpg" for i in range(len(labels))], "label": labels})
    return frame, _unit(np.concatenate(vectors))


def test_allocate_is_as_even_as_sizes_allow():
    assert allocate({"a": 200, "b": 50, "c": 10, "d": 3}, 40) == {"a": 14, "b": 13, "c": 10, "d": 3}
    assert allocate({"a": 5, "b": 5}, 100) == {"a": 5, "b": 5}
    assert allocate({"a": 9, "b": 5, "c": 1}, 2) == {"a": 1, "b": 1, "c": 0}
    assert sum(allocate({"a": 7, "b": 3}, 0).values()) == 0


def test_select_honours_the_budget_and_balances_labels():
    sizes = {"cat": 300, "dog": 80, "fox": 12, "owl": 4}
    pool, vectors = _labelled_pool(sizes)
    for budget in (10, 40, 100, 0.25):
        chosen = select(pool, vectors, CurationSettings(budget=budget))
        expected = budget if isinstance(budget, int) else round(budget * len(pool))
        assert len(chosen) == expected and chosen.index.is_unique
        counts = chosen.label.value_counts().to_dict()
        # as even as possible: a label gets all it has, or at least every other label's count minus one
        level = max(counts.values())
        for label, size in sizes.items():
            assert counts.get(label, 0) == size or counts.get(label, 0) >= level - 1
    chosen = select(pool, vectors, CurationSettings(budget=40))
    assert chosen.label.value_counts().to_dict() == {"cat": 12, "dog": 12, "fox": 12, "owl": 4}
    reasons = chosen.set_index("label").selection_reason
    assert reasons["owl"].tolist() == ["all 4 eligible in label=owl (within its share of the budget)"] * 4
    assert sorted(int(r.split()[1]) for r in reasons["cat"]) == list(range(1, 13))
    assert all(r.startswith("pick ") and " of 12 in label=cat (300 eligible): " in r for r in reasons["cat"])
    everything = select(pool, vectors, CurationSettings())
    assert len(everything) == len(pool) and set(everything.selection_reason) == {"all eligible (no budget)"}
    assert select(pool, vectors, CurationSettings(budget=0)).empty


def test_proportional_shares_follow_sizes():
    assert proportional(np.array([60, 30, 10]), 10).tolist() == [6, 3, 1]
    assert proportional(np.array([5, 3, 1]), 4).tolist() == [2, 1, 1]  # remainders .22, .33, .44
    assert proportional(np.array([1, 1, 98]), 50).tolist()[2] == 49
    assert proportional(np.array([2, 2]), 10).tolist() == [2, 2]
    assert proportional(np.array([], dtype=int), 3).tolist() == []


@pytest.mark.parametrize("method", ["herding", "k-center"])
def test_select_follows_the_density_within_a_stratum_and_starts_with_typical_images(method):
    rng = np.random.default_rng(0)
    centres = _unit(rng.normal(size=(2, 32))) * 8
    vectors, blob = make_blobs(n_samples=[300, 100], centers=centres, cluster_std=1.0, random_state=0)
    vectors = _unit(vectors)
    pool = pd.DataFrame({"image_id": [str(i) for i in range(400)], "uri": "/p", "label": "a"})
    chosen = select(pool, vectors, CurationSettings(budget=40, method=method))
    counts = np.bincount(blob[chosen.index.to_numpy()]).tolist()
    assert 28 <= counts[0] <= 32 and sum(counts) == 40  # about 30/10, not 20/20 as coverage alone would
    first = chosen[chosen.selection_reason.str.startswith("pick 1 of 40")]
    assert blob[first.index[0]] == 0  # the first pick comes from where most images are
    if method == "k-center":
        assert first.selection_reason.iloc[0].endswith("the most typical image of its cell")
        assert chosen.selection_reason.str.contains("k-center").any()  # larger cells get more than one pick
    else:
        assert chosen.selection_reason.str.contains("kernel herding").all()


def test_kernel_herding_matches_the_distribution_better_than_random_subsets():
    from cv_dataops.curation.selection import kernel_herding, median_bandwidth

    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, (300, 8)), rng.normal(4, 0.5, (60, 8)), rng.normal(-5, 2, (40, 8))])
    h = median_bandwidth(x)

    def discrepancy(rows):  # squared maximum mean discrepancy between the subset and all rows (Gaussian kernel)
        def kernel(a, b):
            return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / h)
        s = x[rows]
        return kernel(s, s).mean() - 2 * kernel(s, x).mean() + kernel(x, x).mean()

    for k in (10, 40, 120):
        picks = kernel_herding(x, k)
        assert len(set(picks.tolist())) == k
        random_subsets = [discrepancy(rng.choice(len(x), k, replace=False)) for _ in range(20)]
        assert discrepancy(picks) < min(random_subsets)
    assert np.array_equal(kernel_herding(x, 40), kernel_herding(x, 40))  # deterministic
    assert sorted(kernel_herding(x, 500).tolist()) == list(range(len(x)))  # k is capped at n
    assert kernel_herding(x, 0).size == 0


def test_select_uses_scenarios_for_unlabelled_images_and_is_deterministic():
    pool, vectors = _labelled_pool({"x": 60, "y": 20})
    pool["scenario"] = np.where(np.arange(len(pool)) < 60, 0, 1)
    pool["label"] = None
    first = select(pool, vectors, CurationSettings(budget=20, seed=3))
    assert first.scenario.value_counts().to_dict() == {0: 10, 1: 10}
    assert first.selection_reason.str.contains("in scenario=").all()
    assert first.equals(select(pool, vectors, CurationSettings(budget=20, seed=3)))


def test_shares_keep_every_part_while_the_quota_allows():
    assert shares_keeping_every_part(np.array([95, 4, 1]), 10).tolist() == [8, 1, 1]
    assert proportional(np.array([95, 4, 1]), 10).tolist() == [10, 0, 0]  # what plain rounding would do
    assert shares_keeping_every_part(np.array([50, 30, 20]), 10).tolist() == [5, 3, 2]  # already proportional
    assert shares_keeping_every_part(np.array([5, 3, 0, 2]), 2).tolist() == [1, 1, 0, 0]  # fewer picks than parts
    assert shares_keeping_every_part(np.array([4, 1]), 5).tolist() == [4, 1]


def test_a_rare_scenario_within_a_label_stays_in_the_selection_and_coverage_says_so():
    """Night scenes are 3 % of every class: plain herding over each class would spend a small quota on the dense
    day scenes; the quota is shared over the class's scenarios, each getting at least one pick."""
    pool, vectors = _labelled_pool({"car": 100, "bus": 100})
    night = (np.arange(len(pool)) % 100) >= 97
    pool["scenario"] = np.where(night, 7, 0)
    vectors = vectors.copy()
    vectors[night] = _unit(vectors[night] + 4.0)  # night images sit apart in embedding space
    chosen = select(pool, vectors, CurationSettings(budget=10))
    assert len(chosen) == 10
    assert chosen.groupby("label").scenario.apply(lambda s: set(s)).to_dict() == {"bus": {0, 7}, "car": {0, 7}}
    assert chosen.selection_reason.str.contains(r"in label=(?:car|bus), scenario=(?:0|7)").all()
    found = coverage(pool, chosen.image_id)
    assert found.kept_everything and found.selected == 10
    assert found.scenario_shares.loc[7, ["eligible", "selected"]].tolist() == [6, 2]
    dropped = coverage(pool, chosen.image_id[chosen.scenario == 0])
    assert dropped.dropped_scenarios == [7] and dropped.dropped_labels == [] and not dropped.kept_everything
    only_cars = coverage(pool, pool.image_id[pool.label == "car"])
    assert only_cars.dropped_labels == ["bus"] and only_cars.dropped_scenarios == []


def test_a_large_stratum_is_herded_inside_cells(monkeypatch):
    from cv_dataops.curation import selection

    monkeypatch.setattr(selection, "HERD_ROWS", 100)  # the cell path, on a pool small enough for a unit test
    rng = np.random.default_rng(0)
    centres = _unit(rng.normal(size=(2, 32))) * 8
    vectors, blob = make_blobs(n_samples=[300, 100], centers=centres, cluster_std=1.0, random_state=0)
    pool = pd.DataFrame({"image_id": [str(i) for i in range(400)], "uri": "/p", "label": "a"})
    chosen = select(pool, _unit(vectors), CurationSettings(budget=40))
    assert len(chosen) == 40 and chosen.index.is_unique
    assert 27 <= np.bincount(blob[chosen.index.to_numpy()])[0] <= 33
    assert chosen.equals(select(pool, _unit(vectors), CurationSettings(budget=40)))


def test_a_drifted_batch_takes_its_share_of_the_budget_first():
    """A small new batch (a new camera) that drifted would get its proportional few picks; it takes up to
    drift_share of the budget first, and the rest is balanced as before."""
    sizes = {"cat": 300, "dog": 300}
    pool, vectors = _labelled_pool(sizes)
    pool["drifted_batch"] = False
    pool.loc[pool.index[:30], "drifted_batch"] = True   # 30 images of a batch that drifted
    chosen = select(pool, vectors, CurationSettings(budget=40))
    reserved = chosen["selection_reason"].str.contains(" in the batches that drifted (30 eligible): ", regex=False)
    assert len(chosen) == 40 and reserved.sum() == 10  # a quarter of the budget, first
    assert chosen.loc[reserved, "drifted_batch"].all() and chosen["drifted_batch"].sum() >= 10
    assert chosen.label.value_counts().max() - chosen.label.value_counts().min() <= 10
    off = select(pool, vectors, CurationSettings(budget=40, drift_share=0))
    assert off["drifted_batch"].sum() < 10 and len(off) == 40
    everything = select(pool.assign(drifted_batch=True), vectors, CurationSettings(budget=40, drift_share=1.0))
    assert len(everything) == 40 and everything["drifted_batch"].all()
    with pytest.raises(ValueError, match="drift_share"):
        CurationSettings(drift_share=1.5)


@pytest.mark.parametrize("method", ["herding", "k-center"])
def test_select_spends_a_small_budget_on_typical_images_not_outliers(method):
    rng = np.random.default_rng(0)
    centre = _unit(rng.normal(size=(1, 16)))[0]
    typical = _unit(centre + 0.15 * rng.normal(size=(200, 16)))
    outliers = _unit(rng.normal(size=(8, 16)))  # far from the stratum's mass, spread out
    vectors = np.concatenate([typical, outliers])
    pool = pd.DataFrame({"image_id": [str(i) for i in range(208)], "uri": "/p", "label": "a"})
    assert (k_center_greedy(vectors, 10) >= 200).sum() >= 7  # plain farthest-point takes the outliers first
    chosen = select(pool, vectors, CurationSettings(budget=10, method=method))
    assert len(chosen) == 10 and (chosen.index < 200).all()
    # at a large budget the outliers are worth having: k-center takes them all, herding about its share
    outliers_at_150 = (select(pool, vectors, CurationSettings(budget=150, method=method)).index >= 200).sum()
    assert outliers_at_150 == 8 if method == "k-center" else outliers_at_150 >= 5


def test_settings_are_validated():
    for bad in ({"budget": 1.5}, {"budget": -1}, {"budget": True}, {"split_fractions": (0.5, 0.5)},
                {"split_fractions": (1.0, -0.1, 0.1)}, {"neighbour_radius": -0.1}, {"method": "random"}):
        with pytest.raises(ValueError):
            CurationSettings(**bad)


# --- leak-free splits -------------------------------------------------------------------------------------------

def _pool_with_planted_leaks(seed=0):
    """300 distinct images (3 labels, imbalanced), 80 near copies of them and 20 exact-duplicate groups."""
    rng = np.random.default_rng(seed)
    base = _unit(rng.normal(size=(300, 24)))
    labels = np.array(["a"] * 180 + ["b"] * 90 + ["c"] * 30, dtype=object)
    sources = rng.choice(300, 80, replace=False)
    copies = _unit(base[sources] + 0.02 * rng.normal(size=(80, 24)))  # cosine distance ~ 0.005
    chain = _unit(copies[:10] + 0.02 * rng.normal(size=(10, 24)))     # copies of copies: triangles
    vectors = np.concatenate([base, copies, chain])
    frame = pd.DataFrame({"image_id": [f"{i:064x}" for i in range(len(vectors))],
                          "uri": [f"s3://bucket/{i}.png" for i in range(len(vectors))],
                          "label": np.concatenate([labels, labels[sources], labels[sources[:10]]])})
    groups = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    far_pairs = rng.choice(np.setdiff1d(np.arange(300), sources), (20, 2), replace=False)
    for number, (a, b) in enumerate(far_pairs):  # groups found by hashes, not close in embedding space
        groups[a] = groups[b] = f"dup-{number}"
    truth = ([(int(s), 300 + i) for i, s in enumerate(sources)] + [(300 + i, 380 + i) for i in range(10)]
             + [(int(a), int(b)) for a, b in far_pairs])
    return frame.sample(frac=1.0, random_state=seed), vectors, groups, truth


def test_near_pairs_agree_with_brute_force():
    frame, vectors, _, _ = _pool_with_planted_leaks()
    i, j, distance = near_pairs(vectors, 0.05)
    cosine = 1.0 - vectors.astype(np.float64) @ vectors.astype(np.float64).T
    a, b = np.nonzero(np.triu(cosine < 0.05, k=1))
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == sorted(zip(a.tolist(), b.tolist(), strict=True))
    assert len(i) == 100 and np.allclose(distance, cosine[i, j], atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_leak_free_split_has_no_leakage_and_hits_the_fractions(seed):
    frame, vectors, groups, truth = _pool_with_planted_leaks(seed)
    order = frame.index.to_numpy()
    rows, rows_vectors, rows_groups = frame, vectors[order], groups[order]
    settings = CurationSettings(neighbour_radius=0.05, seed=seed)
    split = leak_free_split(rows, rows_vectors, settings, rows_groups)
    assert split.index.equals(rows.index) and set(split) == {"train", "val", "test"}
    report = leakage(split, rows_vectors, rows_groups, 0.05)
    assert report["duplicate_groups_across_splits"] == 0 and report["near_pairs_across_splits"] == 0
    assert report["leak_free"] and report["near_pairs"] == 100
    assert all(split[a] == split[b] for a, b in truth)  # every planted pair in one split
    shares = split.value_counts(normalize=True)
    assert abs(shares["train"] - 0.8) < 0.02 and abs(shares["val"] - 0.1) < 0.02
    assert abs(shares["test"] - 0.1) < 0.02
    for label in "abc":  # stratified: every label near the targets in every split
        by_label = split[rows.label == label].value_counts()
        total = by_label.sum()
        for name, fraction in zip(("train", "val", "test"), (0.8, 0.1, 0.1), strict=True):
            assert abs(by_label.get(name, 0) - fraction * total) <= 2.5
    assert split.equals(leak_free_split(rows, rows_vectors, settings, rows_groups))  # deterministic
    # a careless random split leaks, and leakage() sees it
    careless = pd.Series(np.random.default_rng(seed).choice(["train", "val", "test"], len(rows), p=[.8, .1, .1]),
                         index=rows.index)
    careless_report = leakage(careless, rows_vectors, rows_groups, 0.05)
    assert careless_report["near_pairs_across_splits"] > 0 and not careless_report["leak_free"]
    assert careless_report["examples"]


def test_leak_free_split_with_a_positional_group_list_and_a_zero_fraction():
    frame, vectors, groups, _ = _pool_with_planted_leaks()
    frame = frame.sort_index()
    split = leak_free_split(frame, vectors, CurationSettings(split_fractions=(0.7, 0.3, 0.0)), groups.tolist())
    assert set(split) == {"train", "val"}
    assert leakage(split, vectors, groups, 0.05)["leak_free"]


def test_images_keep_their_split_across_versions_and_new_clusters_fill_the_targets():
    """Split afresh, a version that adds images moves many earlier ones to another split (a model trained on the
    old train split would be scored on its own training images); kept, only a cluster that new images joined to
    earlier images of two splits moves, and the new clusters bring the shares back to the targets."""
    frame, vectors, groups, _ = _pool_with_planted_leaks()
    settings = CurationSettings(neighbour_radius=0.05)
    first = frame.iloc[:250]
    before = leak_free_split(first, vectors[first.index.to_numpy()], settings, groups[first.index])
    previous = dict(zip(first.image_id, before, strict=True))
    order = frame.index.to_numpy()
    fresh = leak_free_split(frame, vectors[order], settings, groups[order])
    kept = leak_free_split(frame, vectors[order], settings, groups[order], previous=previous)
    report = leakage(kept, vectors[order], groups[order], 0.05)
    assert report["leak_free"] and report["near_pairs"] == 100

    def moved(split):
        return sum(split[row] != previous[frame.image_id[row]] for row in first.index)

    # which earlier images had to move: those whose new cluster holds earlier images of two splits
    i, j, _ = near_pairs(vectors[order], 0.05)
    from cv_dataops.core.graph import connected_components

    ga, gb = [], []
    positions = {row: position for position, row in enumerate(order)}
    for group in set(groups.dropna()):
        members = [positions[r] for r in groups.index[groups == group]]
        ga += members[:1] * (len(members) - 1)
        gb += members[1:]
    component = connected_components(np.concatenate([i, ga]).astype(np.int64),
                                     np.concatenate([j, gb]).astype(np.int64), len(order))
    earlier = {}
    for position, row in enumerate(order):
        if frame.image_id[row] in previous:
            earlier.setdefault(component[position], set()).add(previous[frame.image_id[row]])
    forced = sum(len(earlier[component[positions[row]]]) > 1 for row in first.index)
    assert moved(kept) <= forced < 10
    assert moved(fresh) > 40  # what keeping prevents
    shares = kept.value_counts(normalize=True)
    assert abs(shares["train"] - 0.8) < 0.03 and abs(shares["val"] - 0.1) < 0.03 and abs(shares["test"] - 0.1) < 0.03
    assert kept.equals(leak_free_split(frame, vectors[order], settings, groups[order], previous=previous))


def test_a_cluster_joining_earlier_splits_takes_the_majority_and_empty_splits_are_not_kept():
    angles = np.radians([0.0, 5.0, 10.0, 20.0, 90.0])  # 0-5-10-20 degrees: one chain under 0.05; 90: alone
    vectors = np.stack([np.cos(angles), np.sin(angles), np.zeros(5)], axis=1)
    frame = pd.DataFrame({"image_id": list("adbcz"), "uri": "/x", "label": "a"})
    previous = {"a": "train", "d": "train", "c": "test", "z": "test"}
    split = leak_free_split(frame, vectors, CurationSettings(), previous=previous)
    assert split.tolist() == ["train"] * 4 + ["test"]  # c joins a and d's train cluster; z keeps test
    only_train = leak_free_split(frame, vectors, CurationSettings(split_fractions=(1.0, 0.0, 0.0)), previous=previous)
    assert set(only_train) == {"train"}


def test_one_cluster_larger_than_a_split_stays_whole():
    vectors = _unit(np.ones((10, 4)) + 0.001 * np.random.default_rng(0).normal(size=(10, 4)))
    frame = pd.DataFrame({"image_id": list("abcdefghij"), "uri": "/x", "label": "a"})
    split = leak_free_split(frame, vectors, CurationSettings())
    assert split.nunique() == 1


# --- snapshots and exports --------------------------------------------------------------------------------------

def _curated_rows():
    rows = pd.DataFrame({
        "image_id": [hashlib.sha256(bytes([i])).hexdigest() for i in range(6)],
        "uri": ["/data/a.jpg", "s3://b/k/b.PNG", "/data/c", "/data/d.jpeg", "/data/e.jpg", "/data/f.webp"],
        "label": ["cat", "dog", None, "=HYPERLINK(\"http://evil\")", "../../etc", "cat"],
        "split": ["train", "train", "val", "test", "train", "val"],
        "scenario": [0, 1, -1, 2, 0, 1],
        "selection_reason": ["k-center pick 1 of 2 in label=cat"] * 6,
    })
    rows["vector"] = [np.zeros(3, np.float32)] * 6
    return rows


def test_snapshot_id_is_content_addressed():
    rows = _curated_rows()
    snapshot_id, data = snapshot_manifest(rows)
    assert snapshot_id.startswith("snap-") and len(snapshot_id) == 21
    assert snapshot_id == "snap-" + hashlib.sha256(data).hexdigest()[:16]
    assert snapshot_manifest(rows.iloc[::-1])[0] == snapshot_id  # row order does not matter
    assert snapshot_manifest(rows.sample(frac=1, random_state=3).reset_index(drop=True)) == (snapshot_id, data)
    manifest = json.loads(data)
    assert [e["image_id"] for e in manifest["images"]] == sorted(rows.image_id)
    assert set(manifest["images"][0]) == {"image_id", "uri", "sha256", "label", "split"}
    assert all(e["sha256"] == e["image_id"] for e in manifest["images"])
    relabelled = rows.copy()
    relabelled.loc[0, "label"] = "lynx"
    assert snapshot_manifest(relabelled)[0] != snapshot_id
    moved = rows.copy()
    moved.loc[2, "split"] = "train"
    assert snapshot_manifest(moved)[0] != snapshot_id
    with pytest.raises(ValueError):
        snapshot_manifest(pd.concat([rows, rows.iloc[:1]]))


def test_csv_export_neutralizes_formulas():
    rows = _curated_rows()
    rows.loc[1, "uri"] = "+cmd|' /C calc'!A0"
    rows.loc[2, "selection_reason"] = "-2+3"
    rows.loc[4, "selection_reason"] = "@SUM(A1)"
    rows.loc[5, "selection_reason"] = "\t=1"
    rows.loc[0, "selection_reason"] = "\r=1"
    parsed = list(csv.DictReader(io.StringIO(export_csv(rows).decode("utf-8"), newline="")))
    assert "vector" not in parsed[0]
    for row in parsed:
        for column, value in row.items():
            if column != "scenario":  # numbers stay numbers: -1 is not a formula
                assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), value
    assert parsed[3]["label"] == "'=HYPERLINK(\"http://evil\")"
    assert parsed[1]["uri"] == "'+cmd|' /C calc'!A0" and parsed[2]["selection_reason"] == "'-2+3"
    assert parsed[2]["label"] == "" and parsed[0]["label"] == "cat" and parsed[2]["scenario"] == "-1"


def test_coco_export_structure():
    rows = _curated_rows()
    sizes = pd.DataFrame({"image_id": rows.image_id, "width": [32, 64, 10, 20, 30, 40],
                          "height": [32, 48, 10, 20, 30, 40]})
    coco = export_coco(rows, sizes)
    image_ids = [i["id"] for i in coco["images"]]
    category_ids = {c["id"] for c in coco["categories"]}
    assert len(coco["images"]) == 6 and len(set(image_ids)) == 6
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"]) == 5  # one label unknown
    assert sorted(c["name"] for c in coco["categories"]) == sorted({"cat", "dog", "../../etc",
                                                                    "=HYPERLINK(\"http://evil\")"})
    by_id = {i["id"]: i for i in coco["images"]}
    for annotation in coco["annotations"]:
        image = by_id[annotation["image_id"]]
        assert annotation["category_id"] in category_ids
        assert annotation["bbox"] == [0, 0, image["width"], image["height"]]
        assert annotation["area"] == image["width"] * image["height"] and annotation["iscrowd"] == 0
    assert all(i["file_name"].split("/")[0] in ("train", "val", "test") for i in coco["images"])
    assert export_coco(rows.iloc[::-1], sizes) == coco  # stable ids and order
    json.dumps(coco)  # plain JSON types only
    with pytest.raises(ValueError):
        export_coco(rows, sizes.iloc[1:])


def test_label_studio_tasks():
    rows = _curated_rows()
    tasks = export_label_studio(rows)
    assert len(tasks) == 6
    by_id = {t["data"]["image_id"]: t for t in tasks}
    cat = by_id[rows.image_id[0]]
    assert cat["data"]["image"] == "/data/a.jpg"
    assert cat["predictions"][0]["result"] == [{"from_name": "choice", "to_name": "image", "type": "choices",
                                                "value": {"choices": ["cat"]}}]
    assert "predictions" not in by_id[rows.image_id[2]] and "annotations" not in by_id[rows.image_id[2]]
    annotated = export_label_studio(rows, as_annotations=True, image_url=lambda u: "http://h/" + u)
    assert all("predictions" not in t for t in annotated)
    assert sum("annotations" in t for t in annotated) == 5
    assert annotated[0]["data"]["image"].startswith("http://h/")
    json.dumps(tasks)
    config = label_studio_config(["cat", "a\"b<c"])
    assert 'name="choice"' in config and 'toName="image"' in config and "&lt;" in config


def test_imagefolder_export_layout_and_integrity():
    rows = _curated_rows()
    store = {uri: bytes([i]) for i, uri in enumerate(rows.uri)}
    written: dict[str, bytes] = {}
    export_imagefolder(rows, store.__getitem__, written.__setitem__)
    first = rows.image_id[0][:16]
    assert written[f"train/cat/{first}.jpg"] == bytes([0])
    assert f"train/dog/{rows.image_id[1][:16]}.PNG" in written
    assert f"val/unlabelled/{rows.image_id[2][:16]}" in written  # no extension in the uri: none in the name
    assert len(written) == 6
    for path in written:
        parts = path.split("/")
        assert len(parts) == 3 and ".." not in parts and parts[0] in ("train", "val", "test")
    tampered = dict(store)
    tampered["/data/a.jpg"] = b"changed since ingestion"
    (skipped,) = export_imagefolder(rows, tampered.__getitem__, lambda path, data: None)
    assert skipped["uri"] == "/data/a.jpg" and "changed since ingest" in skipped["problem"]


def test_older_snapshots_lose_their_imagefolder_copy_but_can_be_rebuilt(tmp_path):
    """Every run with new images writes a new snapshot: keeping every ImageFolder copy grows the data root with the
    number of runs. The newest keep_imagefolders keep theirs; the others keep their manifest and exports, say they
    were pruned, and export_snapshot_imagefolder rebuilds the same tree from the manifest."""
    from cv_dataops.core.storage import LocalStorage
    from cv_dataops.curation.dataset import (
        IMAGEFOLDER_PRUNED,
        CuratedDataset,
        export_snapshot_imagefolder,
        prune_imagefolders,
        record_current,
        write_snapshot,
    )

    storage = LocalStorage(tmp_path / "root")
    files = {}
    ids = []
    for number in range(4):  # four versions, each one image more
        data = f"image {number}".encode()
        image_id = hashlib.sha256(data).hexdigest()
        files[f"/land/{number}.jpg"] = data
        ids.append(image_id)
        rows = pd.DataFrame({"image_id": ids, "uri": list(files), "label": "cat", "split": "train",
                             "width": 1, "height": 1})
        snapshot_id, manifest = snapshot_manifest(rows)
        dataset = CuratedDataset(rows.assign(snapshot_id=snapshot_id), rows.iloc[:0], len(rows), snapshot_id,
                                 manifest)
        write_snapshot(storage, dataset, files.__getitem__)
        history = record_current(storage, snapshot_id, f"2026-12-0{number + 1}")
        pruned = prune_imagefolders(storage, history, keep=2, now=f"2026-12-0{number + 1}")
        assert len(history) == number + 1 and pruned == ([history[number - 2]["snapshot_id"]] if number >= 2 else [])
    assert record_current(storage, snapshot_id, "later") == history  # the same snapshot again: no new entry
    oldest = history[0]["snapshot_id"]
    assert not list(storage.list(f"snapshots/{oldest}/imagefolder/"))
    assert storage.exists(f"snapshots/{oldest}/manifest.json") and storage.exists(f"snapshots/{oldest}/export.csv")
    assert json.loads(storage.read_text(f"snapshots/{oldest}/{IMAGEFOLDER_PRUNED}"))["images_removed"] == 1
    assert len(list(storage.list(f"snapshots/{history[-1]['snapshot_id']}/imagefolder/"))) == 4
    rebuilt = {}
    assert export_snapshot_imagefolder(storage, oldest, files.__getitem__, rebuilt.__setitem__) == (1, [])
    assert list(rebuilt) == ["train/cat/" + ids[0][:16] + ".jpg"] and rebuilt[list(rebuilt)[0]] == b"image 0"
    from cv_dataops.curation.snapshots import read_snapshot

    assert read_snapshot(storage, "..") is None and read_snapshot(storage, oldest) is not None
    with pytest.raises(KeyError, match="no snapshot 'snap-none'"):
        export_snapshot_imagefolder(storage, "snap-none", files.__getitem__, rebuilt.__setitem__)
    assert prune_imagefolders(storage, history, keep=None, now="x") == []
    # the oldest becomes current again (a setting reverted): its copy is written again and the marker goes
    first_rows = pd.DataFrame({"image_id": ids[:1], "uri": list(files)[:1], "label": "cat", "split": "train",
                               "width": 1, "height": 1})
    again_id, again_manifest = snapshot_manifest(first_rows)
    assert again_id == oldest
    write_snapshot(storage, CuratedDataset(first_rows.assign(snapshot_id=again_id), first_rows.iloc[:0], 1, again_id,
                                           again_manifest), files.__getitem__)
    assert len(list(storage.list(f"snapshots/{oldest}/imagefolder/"))) == 1
    assert not storage.exists(f"snapshots/{oldest}/{IMAGEFOLDER_PRUNED}")



def test_a_new_snapshot_links_what_the_last_one_holds_and_reads_only_the_rest(tmp_path):
    """A run that adds a batch writes a snapshot holding nearly every image of the last one: those are hard links
    to the last tree (not read from the landing zone again), and only the new or moved images (a new label or
    split is another path) are read and verified. The old tree can be pruned without touching the new one."""
    from cv_dataops.core.storage import LocalStorage
    from cv_dataops.curation.dataset import CuratedDataset, prune_imagefolders, record_current, write_snapshot

    storage = LocalStorage(tmp_path / "root")
    files = {f"/land/{number}.jpg": f"image {number}".encode() for number in range(4)}
    ids = {uri: hashlib.sha256(data).hexdigest() for uri, data in files.items()}
    reads = []

    def read(uri):
        reads.append(uri)
        return files[uri]

    def snapshot(uris, labels, when):
        rows = pd.DataFrame({"image_id": [ids[u] for u in uris], "uri": uris, "label": labels, "split": "train",
                             "width": 1, "height": 1})
        snapshot_id, manifest = snapshot_manifest(rows)
        write_snapshot(storage, CuratedDataset(rows.assign(snapshot_id=snapshot_id), rows.iloc[:0], len(rows),
                                               snapshot_id, manifest), read)
        return snapshot_id, record_current(storage, snapshot_id, when)

    first, _ = snapshot(list(files)[:3], ["cat", "cat", "dog"], "1")
    assert sorted(reads) == list(files)[:3]
    reads.clear()
    second, history = snapshot(list(files), ["cat", "dog", "dog", "dog"], "2")  # one relabelled, one new
    assert sorted(reads) == ["/land/1.jpg", "/land/3.jpg"]
    tree = storage.local_path(f"snapshots/{second}/imagefolder")
    kept = tree / "train" / "cat" / f"{ids['/land/0.jpg'][:16]}.jpg"
    assert kept.stat().st_nlink == 2 and kept.read_bytes() == b"image 0"
    assert sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*.jpg")) == sorted(
        [f"train/cat/{ids['/land/0.jpg'][:16]}.jpg"] + [f"train/dog/{ids[u][:16]}.jpg" for u in list(files)[1:]])
    assert prune_imagefolders(storage, history, keep=1, now="3") == [first]
    assert kept.stat().st_nlink == 1 and kept.read_bytes() == b"image 0"
