"""The review round's budget: equal shares, unused shares passed on, each image once, in priority order."""

import pandas as pd

from cv_dataops.labels.review_queue import (
    ACTIVE,
    DRIFT_ATYPICAL,
    PROBABLE_ERROR,
    UNCERTAIN_AUTO,
    active_learning_rows,
    compose_review_queue,
    counts,
    drift_atypical_rows,
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
    audited = pd.DataFrame({"image_id": ["c", "a"], "status": ["reviewed", "human"], "review_label": [None, None]})
    decisions = pd.DataFrame({"image_id": ["e", "f", "g"], "label": ["dog", "cat", "cat"],
                              "confidence": [0.6, 0.4, 0.99], "decision": ["review", "review", "auto"],
                              "reason": ["low"] * 3, "model_version": ["v0001"] * 3})
    active = active_learning_rows(["f", "h", "i"], ["coverage"] * 3)
    queue = compose_review_queue(6, probable_errors(issues, audited), uncertain_auto_labels(decisions), active)
    assert queue["image_id"].tolist() == ["b", "a", "f", "e", "h", "i"]
    assert counts(queue) == {DRIFT_ATYPICAL: 0, PROBABLE_ERROR: 2, UNCERTAIN_AUTO: 2, ACTIVE: 2}
    assert queue["position"].tolist() == [1, 2, 3, 4, 5, 6]
    assert queue.set_index("image_id").loc["b", "prefill_label"] == "dog"


def test_an_empty_round():
    empty = probable_errors(pd.DataFrame(), pd.DataFrame({"image_id": [], "status": []}))
    queue = compose_review_queue(5, empty, uncertain_auto_labels(pd.DataFrame()), active_learning_rows([], []))
    assert queue.empty and counts(queue) == {DRIFT_ATYPICAL: 0, PROBABLE_ERROR: 0, UNCERTAIN_AUTO: 0, ACTIVE: 0}


def test_a_drifted_batch_puts_its_most_atypical_unlabelled_images_first_within_half_the_budget():
    summary = pd.DataFrame({"batch_id": ["b1", "b2", "b3"], "drifted": [True, False, True],
                            "top_cause": ["width grew", None, "sharpness dropped"]})
    atypicality = pd.DataFrame({"batch_id": ["b1", "b1", "b1", "b2", "b3", "b3"],
                                "image_id": ["p", "q", "r", "s", "t", "u"], "atypicality": [0.9, 0.8, 0.1, 1.0, 0.7, 0.6],
                                "rank": [1, 2, 3, 1, 1, 2]})
    audited = pd.DataFrame({"image_id": ["q", "u"], "status": ["human", "auto_accepted"]})
    drifted = drift_atypical_rows(atypicality, summary, audited)
    # the newest drifted batch first, each by rank; b2 did not drift; q already has a human label
    assert drifted["image_id"].tolist() == ["t", "u", "p", "r"]
    assert "sharpness dropped" in drifted["detail"].iloc[0]
    active = active_learning_rows(["p", "h", "i", "j"], ["coverage"] * 4)
    queue = compose_review_queue(5, probable_errors(pd.DataFrame(), audited), uncertain_auto_labels(pd.DataFrame()),
                                 active, drifted=drifted)
    # two of five (half, rounded down) for the drift; p, not taken for it, comes once, as an active-learning pick
    assert queue["image_id"].tolist() == ["t", "u", "p", "h", "i"]
    assert counts(queue)[DRIFT_ATYPICAL] == 2 and queue["position"].tolist() == [1, 2, 3, 4, 5]


def test_a_label_a_reviewer_disputed_is_not_asked_again():
    """The reviewer said "dog" for a human "cat": the label is disputed until someone settles it, and the same
    question is not spent on the next round."""
    issues = pd.DataFrame({"image_id": ["a", "b"], "given_label": ["cat"] * 2, "suggested_label": ["dog"] * 2,
                           "score": [0.1, 0.2], "rank": [1, 2], "is_issue": [True, True], "detail": ["x"] * 2})
    audited = pd.DataFrame({"image_id": ["a", "b"], "status": ["disputed", "human"], "review_label": ["dog", None]})
    assert probable_errors(issues, audited)["image_id"].tolist() == ["b"]

