"""grayscale: no colour.

The score is min(1, 2 x the 99th percentile of per-pixel chroma (max - min of R, G, B) / the 1..99 percentile luma
range (at least 16 levels)); 0 for single-channel files. With the default threshold 0.11, "grayscale" means 99% of
pixels have channels within 5.5% of the image's contrast of each other (~14 levels for a full-range image).
CleanVision flags only mode "L" files (its score is 0 or 1); this also catches RGB files with (nearly) equal
channels, and, being relative to contrast, does not mistake a dark or washed-out colour photo for a gray one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cv_dataops.quality.issues import IssueType, register

if TYPE_CHECKING:
    from cv_dataops.quality.measure import ImageStatistics

_GAIN = 2.0
_MIN_RANGE = 16.0   # luma levels: a low-contrast image is not called gray for its (small) chroma alone


def score(statistics: ImageStatistics) -> float:
    luma_range = statistics.luma_p99 - statistics.luma_p01
    return min(1.0, _GAIN * statistics.chroma_p99 / max(luma_range, _MIN_RANGE))


ISSUE = register(IssueType(
    name="grayscale", meaning="no colour: a grayscale mode, or RGB whose three channels are (nearly) equal",
    threshold=0.11, unusable=False, score=score))
