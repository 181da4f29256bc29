"""The review round's budget: equal shares, unused shares passed on, each image once, in priority order."""

import pandas as pd

from cv_dataops.labels.review_queue import (
    ACTIVE,
    PROBABLE_ERROR,
    UNCERTAIN_AUTO,
    active_learning_rows,
    compose_review_queue,
    counts,
    probable_errors,
    shares,
    uncertain_auto_labels,
)


def test_shares_are_equal_and_unused_ones_pass_on():
    assert shares(9, {PROBABLE_ERROR: 10, UNCERTAIN_AUTO: 10, ACTIVE: 10}) == {PROBABLE_ERROR: 3, UNCERTAIN_AUTO: 3,
                                                                               ACTIVE: 3}
    assert shares(10, {PROBABLE_ERROR: 10, UNCERTAIN_AUTO: 10, ACTIVE: 10})[PROBABLE_ERROR] == 4
    assert shares(9, {PROBABLE_ERROR: 1, UNCERTAIN_AUTO: 0, ACTIVE: 20}) == {PROBABLE_ERROR: 1, UNCERTAIN_AUTO: 0,
                                                                            ACTIVE: 8}
    assert shares(9, {PROBABLE_ERROR: 2}) == {PROBABLE_ERROR: 2, UNCERTAIN_AUTO: 0, ACTIVE: 0}


def test_queue_orders_by_priority_skips_reviewed_and_takes_each_image_once():
    issues = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "given_label": ["cat"] * 4,
                           "suggested_label": ["dog"] * 4, "score": [0.3, 0.1, 0.2, 0.9], "rank": [3, 1, 2, 4],
                           "is_issue": [True, True, True, False], "detail": ["x"] * 4})
    audited = pd.DataFrame({"image_id": ["c"], "status": ["reviewed"]})
    decisions = pd.DataFrame({"image_id": ["e", "f", "g"], "label": ["dog", "cat", "cat"],
                              "confidence": [0.6, 0.4, 0.99], "decision": ["review", "review", "auto"],
                              "reason": ["low"] * 3, "model_version": ["v0001"] * 3})
    active = active_learning_rows(["f", "h", "i"], ["coverage"] * 3)
    queue = compose_review_queue(6, probable_errors(issues, audited), uncertain_auto_labels(decisions), active)
    assert queue["image_id"].tolist() == ["b", "a", "f", "e", "h", "i"]
    assert counts(queue) == {PROBABLE_ERROR: 2, UNCERTAIN_AUTO: 2, ACTIVE: 2}
    assert queue["position"].tolist() == [1, 2, 3, 4, 5, 6]
    assert queue.set_index("image_id").loc["b", "prefill_label"] == "dog"


def test_an_empty_round():
    empty = probable_errors(pd.DataFrame(), pd.DataFrame({"image_id": [], "status": []}))
    queue = compose_review_queue(5, empty, uncertain_auto_labels(pd.DataFrame()), active_learning_rows([], []))
    assert queue.empty and counts(queue) == {PROBABLE_ERROR: 0, UNCERTAIN_AUTO: 0, ACTIVE: 0}
