import pandas as pd
import pytest

from cv_dataops.drift.reference import ReferenceSettings, choose_reference


def _curated(snapshot="snap-a", n=30):
    return pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "split": ["train"] * (n - 5) + ["test"] * 5,
                         "snapshot_id": snapshot})


def test_default_is_the_current_snapshots_train_split_without_the_batchs_own_images():
    choice = choose_reference(ReferenceSettings(), "b9", ["i0", "i1"], curated=_curated())
    assert choice.available and choice.reference_id == "snap-a"
    assert len(choice.image_ids) == 23 and "i0" not in choice.image_ids and "i29" not in choice.image_ids


def test_no_snapshot_yet_means_no_reference_and_says_so():
    choice = choose_reference(ReferenceSettings(), "b1", curated=None)
    assert not choice.available and choice.image_ids == () and "no curated snapshot" in choice.reason
    small = choose_reference(ReferenceSettings(minimum_images=50), "b1", curated=_curated())
    assert not small.available and "fewer than 50" in small.reason


def test_a_named_snapshot():
    snapshots = {"snap-old": _curated("snap-old", 40), "snap-a": _curated()}
    choice = choose_reference(ReferenceSettings("named_snapshot", snapshot_id="snap-old"), "b1",
                              snapshots=snapshots)
    assert choice.reference_id == "snap-old" and len(choice.image_ids) == 35
    missing = choose_reference(ReferenceSettings("named_snapshot", snapshot_id="nope"), "b1", snapshots=snapshots)
    assert not missing.available and "snap-old" in missing.reason


def test_the_last_batches_before_this_one():
    batches = {f"b{k}": [f"b{k}-{j}" for j in range(10)] for k in range(1, 6)}
    choice = choose_reference(ReferenceSettings("last_batches", last_batches=2), "b4", earlier_batches=batches)
    assert choice.reference_id == "batches:b2..b3" and len(choice.image_ids) == 20
    first = choose_reference(ReferenceSettings("last_batches"), "b1", earlier_batches=batches)
    assert not first.available and first.reason == "no earlier batch"


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="is not one of"):
        ReferenceSettings("yesterday")
    with pytest.raises(ValueError, match="needs a snapshot_id"):
        ReferenceSettings("named_snapshot")
