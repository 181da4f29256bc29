"""The drift of a batch in words: the causes ranked, "unknown" when only the embeddings moved, and the images most
unlike the reference.

Causes are ranked by effect size relative to its "large" threshold (:data:`~cv_dataops.drift.statistics.
LARGE_EFFECT`), so a KS D and a total variation rank together; ties by p-value, then the property that is its
cause's own first (sharpness before a noise drop named as smoothing), then by name. The embedding-wide tests (MMD,
domain classifier) say *that* the images changed, not *how*: they never name a cause; when they are the only
tests that drifted, the answer is "unknown".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cv_dataops.drift.statistics import PROPERTY_BY_COLUMN, DriftTest

UNKNOWN = "unknown"
_EMBEDDING_WIDE = {"mmd", "domain_classifier"}


@dataclass(frozen=True)
class Cause:
    cause: str         # exposure, sharpness, camera, scenario, novel, predicted_label, confidence, unknown, ...
    feature: str
    text: str
    strength: float    # effect size / its large threshold
    large: bool


def _number(value: float) -> str:
    return f"{value:.3g}" if np.isfinite(value) else "n/a"


def _percent(value: float) -> str:
    return f"{100 * value:.0f}%"


def _shares_words(test: DriftTest, limit: int = 3) -> str:
    shares: pd.DataFrame = test.details.get("shares", pd.DataFrame(columns=["reference", "batch"]))
    change = (shares["batch"] - shares["reference"]).sort_values(key=np.abs, ascending=False)
    parts = []
    for name in change.index[:limit]:
        before, after = shares.at[name, "reference"], shares.at[name, "batch"]
        if abs(after - before) < 0.005:
            continue
        new = " (new)" if before == 0 else " (gone)" if after == 0 else ""
        parts.append(f"'{name}' {_percent(before)} → {_percent(after)}{new}")
    return ", ".join(parts)


def share_changes(test: DriftTest, minimum: float = 0.02) -> pd.DataFrame:
    """Per category (a scenario, a camera, a predicted label): reference and batch shares and whether it grew,
    shrank, is new, gone, or held (a change under ``minimum`` of the images)."""
    shares: pd.DataFrame = test.details.get("shares", pd.DataFrame(columns=["reference", "batch"]))
    frame = shares.rename_axis("category").reset_index()
    change = frame["batch"] - frame["reference"]
    frame["change"] = np.select([frame["reference"].eq(0) & frame["batch"].gt(0),
                                 frame["batch"].eq(0) & frame["reference"].gt(0),
                                 change >= minimum, change <= -minimum], ["new", "gone", "grew", "shrank"], "held")
    return frame


def describe(test: DriftTest, accuracy=None) -> str:
    """One sentence for one drifted test."""
    if test.test == "ks":
        words = PROPERTY_BY_COLUMN[test.feature].words if test.feature in PROPERTY_BY_COLUMN else \
            "model confidence" if test.feature == "confidence" else test.feature
        before, after = test.details.get("reference_median", np.nan), test.details.get("batch_median", np.nan)
        verb = "rose" if after > before else "dropped" if after < before else "changed in spread"
        smoothing = " (smoothing, as blur or denoising do)" if not _primary(test) and test.cause == "sharpness" \
            else ""
        text = (f"{words} {verb}{smoothing}: median {_number(before)} → {_number(after)}, "
                f"KS D = {test.effect_size:.2f}")
        if test.feature == "confidence" and accuracy is not None:
            text += (f"; estimated accuracy {accuracy.reference_accuracy:.2f} → {accuracy.batch_accuracy:.2f} "
                     "(average thresholded confidence)")
        return text
    if test.test == "chi_squared":
        words = {"scenario_shares": "scenario shares changed", "predicted_label": "predicted labels shifted"}.get(
            test.feature, f"{PROPERTY_BY_COLUMN[test.feature].words if test.feature in PROPERTY_BY_COLUMN else test.feature} changed")
        detail = _shares_words(test)
        return f"{words}: {detail} (total variation = {test.effect_size:.2f})" if detail else \
            f"{words} (total variation = {test.effect_size:.2f})"
    if test.test == "fisher":
        return (f"new scenario: {_percent(test.details['batch_share'])} of images are far from every reference "
                f"image (reference {_percent(test.details['reference_share'])})")
    if test.test == "domain_classifier":
        return f"the embeddings changed: a domain classifier tells batch from reference at AUC {test.effect_size:.2f}"
    if test.test == "mmd":
        return f"the embeddings changed: MMD = {test.effect_size:.3g} (p = {test.p_value:.3g})"
    return f"{test.feature} changed ({test.test})"


def _primary(test: DriftTest) -> bool:
    """Whether the test's property is the cause's own (sharpness for sharpness; not noise named as smoothing), so
    it speaks first among equally strong tests."""
    prop = PROPERTY_BY_COLUMN.get(test.feature)
    return prop is None or prop.cause == test.cause


def explain(tests: list[DriftTest], accuracy=None) -> list[Cause]:
    """The causes of the drifted tests, strongest first; ``[unknown]`` when only embedding-wide tests drifted;
    ``[]`` when nothing drifted."""
    drifted = [t for t in tests if t.drifted]
    named = sorted((t for t in drifted if t.test not in _EMBEDDING_WIDE),
                   key=lambda t: (-t.strength, t.p_value if t.p_value is not None else 1.0, not _primary(t),
                                  t.feature))
    causes = [Cause(t.cause, t.feature, describe(t, accuracy), t.strength, t.large) for t in named]
    wide = sorted((t for t in drifted if t.test in _EMBEDDING_WIDE), key=lambda t: t.test)
    if wide and not causes:
        evidence = "; ".join(describe(t) for t in wide)
        causes.append(Cause(UNKNOWN, "embedding", f"{UNKNOWN}: no image property, scenario or model output explains "
                                                  f"it ({evidence})", max(t.strength for t in wide),
                            any(t.large for t in wide)))
    elif wide:
        causes += [Cause(t.cause, t.feature, describe(t), t.strength, t.large) for t in wide]
    return causes


def most_atypical(atypicality: pd.DataFrame, count: int = 12) -> pd.DataFrame:
    """The first ``count`` ranks of the atypicality rows."""
    return atypicality.sort_values("rank").head(count)
