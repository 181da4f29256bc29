"""blurry: little fine detail, judged at the analysis size.

The score is a logistic sharpness score from two contrast-invariant, noise-compensated features that ``measure.py``
takes at the analysis size (see ``ImageStatistics``): how much gradient energy lives in the finest octave
(``octave_ratio``), and how steep the strongest edges are relative to the image's contrast (``edge_steepness``).
The default threshold 0.3 is its decision boundary, fitted on real photos sharp vs Gaussian-blurred by >= 1
analysis pixel. CleanVision's score, 1 - exp(-std(edge filter) / 100) on a copy at most 64 px wide (threshold 0.29),
depends on contrast and cannot see blur smaller than 1/64 of the image; this is a different quantity with the same
meaning and direction. An image with no structure to judge (the features are None: under ~10 levels of luma range,
or under 8 px) scores 1: it is low information, not blurry.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from cv_dataops.quality.issues import IssueType, register

if TYPE_CHECKING:
    from cv_dataops.quality.measure import ImageStatistics

# score = sigmoid(_A * ln(octave_ratio) + _B * ln(edge_steepness) + _C). Fitted by logistic regression on ~1000 real
# photos (scikit-image samples, colour and gray, crops and mosaics, 30% with added noise, JPEG q70-95) and CIFAR-10
# images, sharp versus Gaussian-blurred by 0.4-2% of the image side (>= 1 px), plus flat images with one sharp
# object; AUC 0.999. The intercept is shifted by ln(0.3/0.7) so the decision boundary sits at score 0.3, next to
# CleanVision's default threshold of 0.29.
_A = 10.9
_B = 6.7
_C = 17.1 - 0.847


def score(statistics: ImageStatistics) -> float:
    if statistics.octave_ratio is None or statistics.edge_steepness is None:
        return 1.0
    z = _A * math.log(statistics.octave_ratio) + _B * math.log(max(statistics.edge_steepness, 1e-6)) + _C
    return 1.0 / (1.0 + math.exp(-min(max(z, -50.0), 50.0)))


ISSUE = register(IssueType(
    name="blurry", meaning="out of focus or motion-blurred (little fine detail at a fixed analysis size)",
    threshold=0.3, unusable=True, score=score))
