"""Promote a new label model only if it is not worse than the current one on a frozen holdout of human labels.

The test is paired: both models answer the same holdout items, so what matters per item is whether the candidate
is right where the current model is wrong (+1), the reverse (-1), or they agree (0). The accuracy change is the
mean of those, its lower bound the ``1 - confidence`` quantile of a bootstrap over holdout items (resampling items
is a multinomial draw of the +1 / -1 / 0 counts, so it is exact and cheap for any holdout size). The candidate is
promoted when the lower bound is above ``-tolerance``: it may be a little worse by chance, not clearly worse.
McNemar's exact test on the disagreements is reported beside it.

The first model (nothing promoted yet) is compared with chance, taken as the holdout's majority-class rate (what
always answering the commonest class scores, which is at least 1 / classes): promoted when the bootstrap lower
bound of its accuracy minus that rate is above 0.

The holdout is frozen by image id (:func:`in_holdout`: a hash, not a random draw), so an image stays in or out as
labels accumulate, and neither model is ever trained on it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np

from cv_dataops.labels.model import check_vectors


@dataclass(frozen=True)
class PromotionSettings:
    """``tolerance``: accuracy (as a fraction) a candidate may lose at the lower bound; ``confidence``: one-sided
    level of the bound; ``min_holdout``: fewer human labels than this in the holdout decide nothing."""

    tolerance: float = 0.01
    confidence: float = 0.95
    bootstrap_rounds: int = 10_000
    min_holdout: int = 20
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"tolerance must be in [0, 1), got {self.tolerance}")
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence}")
        if self.bootstrap_rounds < 100 or self.min_holdout < 1:
            raise ValueError("bootstrap_rounds must be at least 100 and min_holdout at least 1")


@dataclass(frozen=True)
class PromotionDecision:
    """Whether to promote, and a one-line ``reason`` a blocking check can show."""

    promote: bool
    reason: str
    holdout_items: int
    candidate_accuracy: float | None
    current_accuracy: float | None = None
    accuracy_change: float | None = None
    lower_bound: float | None = None
    mcnemar_p_value: float | None = None

    def to_metadata(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def in_holdout(image_ids, fraction: float = 0.2, salt: str = "label-holdout") -> np.ndarray:
    """Which images belong to the frozen holdout: a hash of ``salt`` and the image id below ``fraction``. Stable
    across runs and catalog growth (an image never moves in or out)."""
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    limit = int(fraction * 2**64)
    return np.array([int.from_bytes(hashlib.sha256(f"{salt}:{i}".encode()).digest()[:8], "big") < limit
                     for i in image_ids], dtype=bool)


def _lower_quantile(plus: int, minus: int, n: int, settings: PromotionSettings) -> float:
    """Bootstrap ``1 - confidence`` quantile of the mean of n items of which ``plus`` are +1, ``minus`` -1."""
    rng = np.random.default_rng(settings.seed)
    draws = rng.multinomial(n, [plus / n, minus / n, (n - plus - minus) / n], size=settings.bootstrap_rounds)
    return float(np.quantile((draws[:, 0] - draws[:, 1]) / n, 1 - settings.confidence))


def mcnemar_p_value(candidate_only: int, current_only: int) -> float:
    """Two-sided exact McNemar test: a binomial test of the disagreements (1.0 when there are none)."""
    from scipy.stats import binomtest

    total = candidate_only + current_only
    return 1.0 if total == 0 else float(binomtest(candidate_only, total, 0.5).pvalue)


def decide_promotion(candidate, current, holdout_vectors, holdout_labels,
                     settings: PromotionSettings | None = None) -> PromotionDecision:
    """Compare ``candidate`` with ``current`` (None: nothing promoted yet) on the holdout; both must have
    ``predict`` over the same vectors."""
    settings = settings or PromotionSettings()
    labels = np.asarray(holdout_labels)
    n = len(labels)
    if n < settings.min_holdout:
        return PromotionDecision(False, f"not promoted: the holdout has {n} human labels, at least "
                                        f"{settings.min_holdout} are needed to compare models", n, None)
    x, labels = check_vectors(holdout_vectors, labels)
    right = np.asarray(candidate.predict(x)) == labels
    accuracy = float(right.mean())
    level = f"{settings.confidence:.0%}"
    if current is None:
        values, counts = np.unique(labels, return_counts=True)
        chance = float(counts.max() / n)
        # Per item: right minus the majority-class answer's rightness (1 on majority-class items).
        majority = labels == values[counts.argmax()]
        plus, minus = int((right & ~majority).sum()), int((~right & majority).sum())
        lower = _lower_quantile(plus, minus, n, settings) + 0.0
        promote = lower > 0
        verdict = "promoted (first model)" if promote else "not promoted (first model)"
        relation = ">" if promote else "<="
        return PromotionDecision(promote, f"{verdict}: accuracy {accuracy:.3f} on {n} holdout labels, {level} lower "
                                          f"bound {chance + lower:.3f} {relation} the majority-class rate "
                                          f"{chance:.3f}", n, accuracy, chance, accuracy - chance, lower)
    before = np.asarray(current.predict(x)) == labels
    plus, minus = int((right & ~before).sum()), int((~right & before).sum())
    change = (plus - minus) / n
    lower = _lower_quantile(plus, minus, n, settings)
    promote = lower > -settings.tolerance
    verdict, relation = ("promoted", ">") if promote else ("not promoted", "<=")
    p_value = mcnemar_p_value(plus, minus)
    return PromotionDecision(promote, f"{verdict}: holdout accuracy {accuracy:.3f} vs {float(before.mean()):.3f} "
                                      f"(change {change:+.3f}, {level} lower bound {lower:+.3f} {relation} "
                                      f"-{settings.tolerance:.3f} tolerance; McNemar p = {p_value:.3g}) on {n} "
                                      f"human labels", n, accuracy, float(before.mean()), change, lower, p_value)
