"""blurry: the sharpest edges are wide, relative to the image's own size.

The score is 1 - a logistic model's probability of blur, from three contrast-invariant features measured at the
analysis size (see ``ImageStatistics``):

* ``edge_width / blur_unit``: the blur sigma of the image's sharper edges (Hu and de Haan's re-blur ratio at edge
  maxima, per edge direction, so motion blur counts), in units of what counts as blurry: 1% of the image's longer
  side, and never under 1.5 of its own pixels. This is what makes the score scale-free: a 4000 px photo and a
  32 px thumbnail are judged by the same rule.
* ``octave_ratio``: gradient energy at the analysis size over that after 2x2 averaging (noise removed).
* ``edge_steepness``: the strongest gradients over the image's luma range.

The coefficients and the default threshold are fitted by ``bench/fit_quality_thresholds.py`` on the fit half of
the bundled photographs and CIFAR-10 train (never on the held-out sets the benchmark reports). CleanVision's score
(1 - exp(-std(edge filter) / 100) on a copy at most 64 px wide) depends on contrast and image size; this has the
same meaning and direction. An image with no structure to judge (under ~10 levels of luma range, under 8 px, or no
edge above the noise) scores 1: it is low information, not blurry.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from cv_dataops.quality.issues import IssueType, register

if TYPE_CHECKING:
    from cv_dataops.quality.measure import ImageStatistics

# logit(blur) = _W_WIDTH * ln(edge_width / blur_unit + 0.05) + _W_OCTAVE * ln(octave_ratio)
#               + _W_STEEP * ln(edge_steepness) + _BIAS                (bench/fit_quality_thresholds.py)
_W_WIDTH = 1.60
_W_OCTAVE = -3.25
_W_STEEP = -2.44
_BIAS = -6.64


def score(statistics: ImageStatistics) -> float:
    if statistics.octave_ratio is None or statistics.edge_steepness is None or statistics.edge_width is None:
        return 1.0
    z = (_W_WIDTH * math.log(statistics.edge_width / statistics.blur_unit + 0.05)
         + _W_OCTAVE * math.log(statistics.octave_ratio)
         + _W_STEEP * math.log(max(statistics.edge_steepness, 1e-6)) + _BIAS)
    return 1.0 / (1.0 + math.exp(min(max(z, -50.0), 50.0)))


ISSUE = register(IssueType(
    name="blurry", meaning="out of focus or motion-blurred (edges wide for the image's size)",
    threshold=0.68, unusable=True, unusable_threshold=0.01, score=score))
